"""Subject inference on subsets of the real data: ARI against the true subjects, and what was refused.

    python -m benchmarks.subjects_ari                  # the table in docs/reliability.md (~2 min on 2 cores)
    python -m benchmarks.subjects_ari --seeds 5
    python -m benchmarks.subjects_ari --compare-ref 9af8fb9   # also run the inference of an older commit

Ground truth: the full shared set (5,120 slices) is inferred once, and the result is only accepted as the truth when
it checks out on its own terms: 160 subjects of exactly 32 slices, one class per subject, and each subject's
maximum spanning tree a single path (one chain of near-duplicates, which also orders the slices; the test folder's
"NN (MM).jpg" names, where NN is the slice number, agree with that order). Then, per subject, k slices are kept:
adjacent ones (contiguous) or random ones (scattered). Without the shared data it says so and exits 0.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
from scipy.sparse.csgraph import minimum_spanning_tree
from sklearn.metrics import adjusted_rand_score

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data" / "alzheimer-mri"
KS = (2, 4, 8, 16, 32)


def ground_truth(files: list[Path], X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(subject, slice position) per file from the full-set inference, after checking that it is one clean answer."""
    from featurize.subjects import infer_subjects

    inf = infer_subjects(X)
    subj = np.asarray(inf.labels, dtype=str)
    sizes = pd.Series(subj).value_counts()
    classes = np.array([f.parent.name for f in files])
    assert len(sizes) == 160 and set(sizes) == {32}, f"full set: {len(sizes)} subjects, sizes {sorted(set(sizes))}"
    assert all(len(set(classes[subj == s])) == 1 for s in sizes.index), "a subject spans two classes"
    Z = X - X.mean(axis=1, keepdims=True)
    Z /= np.linalg.norm(Z, axis=1, keepdims=True)
    pos = np.full(len(files), -1)
    named = agree = 0
    for s in sizes.index:
        idx = np.flatnonzero(subj == s)
        C = Z[idx] @ Z[idx].T  # 32 x 32, one subject at a time
        np.fill_diagonal(C, 0.0)
        tree = minimum_spanning_tree(2.0 - C).toarray()
        adj = (tree > 0) | (tree.T > 0)
        deg = adj.sum(axis=1)
        assert deg.max() == 2 and (deg == 1).sum() == 2, f"subject {s}: its slices are not one chain"
        order, prev = [int(np.flatnonzero(deg == 1)[0])], -1
        while len(order) < len(idx):
            nxt = next(int(j) for j in np.flatnonzero(adj[order[-1]]) if j != prev)
            prev = order[-1]
            order.append(nxt)
        pos[idx[order]] = np.arange(len(idx))
        nums = [(p, int(m.group(1))) for p, i in enumerate(idx[order])
                if (m := re.fullmatch(r"(\d+) \(\d+\)\.jpg", files[i].name))]
        if len(nums) >= 2:
            named += 1
            agree += bool(np.all(np.abs(np.diff([n for _, n in sorted(nums)])) == 1))
    assert agree == named, f"slice numbers in file names disagree with the chain order for {named - agree} subjects"
    print(f"ground truth: 160 subjects x 32 slices, one class each, every subject one chain of near-duplicates; "
          f"file-name slice numbers agree with the chain order for {agree} of {named} subjects that have them",
          file=sys.stderr)
    return subj, pos


def pick(subj: np.ndarray, pos: np.ndarray, k: int, mode: str, seed: int) -> np.ndarray:
    """Rows of k slices per subject: adjacent ones (contiguous, random start) or random ones (scattered)."""
    rng = np.random.default_rng(seed)
    out = []
    for s in np.unique(subj):
        idx = np.flatnonzero(subj == s)
        idx = idx[np.argsort(pos[idx])]
        if mode == "contiguous":
            a = int(rng.integers(0, len(idx) - k + 1))
            out.append(idx[a:a + k])
        else:
            out.append(np.sort(rng.choice(idx, k, replace=False)))
    return np.concatenate(out)


def score(infer: object, X: np.ndarray, truth: np.ndarray) -> dict:
    """Run one inference; ARI, groups, mixed groups (more than one person) and whether it refused."""
    t0 = time.perf_counter()
    try:
        inf = infer(X, strict=False)
    except TypeError:  # an older inference without strict=: it never refuses
        inf = infer(X)
    labels = np.asarray(inf.labels, dtype=str)
    mixed = int((pd.DataFrame({"g": labels, "t": truth}).groupby("g")["t"].nunique() > 1).sum())
    return {"ari": adjusted_rand_score(truth, labels), "groups": len(set(labels)), "mixed": mixed,
            "refused": bool(getattr(inf, "undetermined", "")), "coverage": getattr(inf, "coverage", np.nan),
            "separation": inf.separation, "seconds": time.perf_counter() - t0}


def load_ref(ref: str) -> ModuleType:
    """featurize/subjects.py as of git ``ref``, imported on its own (its inference needs only numpy/scipy/PIL)."""
    src = subprocess.run(["git", "-C", str(ROOT), "show", f"{ref}:featurize/subjects.py"], check=True,
                         capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "ref_subjects.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("ref_subjects", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["ref_subjects"] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def verdict(r: dict) -> str:
    """One seed's cell: ARI (or refused), groups mixing people, and [groups found]."""
    if r["refused"]:
        return f"refused [{r['groups']}]"
    return f"{r['ari']:.3f}" + (f", {r['mixed']} mixed" if r["mixed"] else "") + f" [{r['groups']}]"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=SHARED_DATA)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--compare-ref", default=None, help="git ref whose featurize/subjects.py to run alongside")
    args = ap.parse_args(argv)
    if not args.data.is_dir():
        print(f"skipped: shared data not present ({args.data})")
        return 0
    sys.path.insert(0, str(ROOT))
    from featurize.subjects import infer_subjects, thumbnails

    files = sorted(args.data.glob("*/*/*.jpg"))
    X = thumbnails(files)
    subj, pos = ground_truth(files, X)
    runners = {"new": infer_subjects}
    if args.compare_ref:
        runners[args.compare_ref] = load_ref(args.compare_ref).infer_subjects

    rows = []
    for mode in ("contiguous", "scattered"):
        for k in KS:
            for seed in range(args.seeds):
                sel = pick(subj, pos, k, mode, seed)
                for name, fn in runners.items():
                    rows.append({"case": f"{mode} k={k}", "seed": seed, "n": len(sel), "code": name,
                                 "true": len(set(subj[sel])),
                                 **score(fn, X[sel], subj[sel])})
    rel = [str(f.relative_to(args.data)) for f in files]
    train = {c: sorted(i for i, r in enumerate(rel) if r.startswith(f"train/{c}/"))
             for c in sorted({f.parent.name for f in files})}
    # "first 100 by name": the order `ls` gives, i.e. sorted file names within each train class folder.
    first100 = np.array(sorted(i for c in train.values() for i in sorted(c, key=lambda i: files[i].name)[:100]))
    extra = [("first 100 by name per train class", 0, first100)]
    for seed in range(args.seeds):
        rng = np.random.default_rng(100 + seed)
        extra.append(("600 random slices", seed, np.sort(rng.choice(len(files), 600, replace=False))))
        extra.append(("48 random slices", seed, np.sort(rng.choice(len(files), 48, replace=False))))
    for seed in range(args.seeds):
        # Lone slices beside adjacent ones, and scans with a hole (two runs of 4, 12 slices apart).
        rng = np.random.default_rng(200 + seed)
        people = rng.permutation(np.unique(subj))
        runs = pick(subj[np.isin(subj, people[:-20])], pos[np.isin(subj, people[:-20])], 4, "contiguous", seed)
        lone = [rng.choice(np.flatnonzero(subj == s)) for s in people[-20:]]
        extra.append(("k=4 contiguous for 140 people + 1 slice of 20 others", seed,
                      np.sort(np.concatenate([np.flatnonzero(np.isin(subj, people[:-20]))[runs], lone]))))
    holes = np.concatenate([np.flatnonzero(subj == s)[np.argsort(pos[subj == s])][np.r_[0:4, 16:20]]
                            for s in np.unique(subj)])
    extra.append(("2 runs of 4 per person (a hole in each scan)", 0, np.sort(holes)))
    for case, seed, sel in extra:
        for name, fn in runners.items():
            rows.append({"case": case, "seed": seed, "n": len(sel), "code": name, "true": len(set(subj[sel])),
                         **score(fn, X[sel], subj[sel])})
    df = pd.DataFrame(rows)

    print("| subset | slices | true subjects | " + " | ".join(f"{c}: ARI per seed [groups]" for c in runners) + " |")
    print("|---|---|---|" + "---|" * len(runners))
    for case, g in df.groupby("case", sort=False):
        h = g[g.code == "new"]
        cells = ["; ".join(verdict(r) for r in g[g.code == name].to_dict("records"))
                 for name in runners]
        sizes = "/".join(dict.fromkeys(str(n) for n in h["n"]))
        true = "/".join(dict.fromkeys(str(n) for n in h["true"]))
        print(f"| {case} | {sizes} | {true} | " + " | ".join(cells) + " |")
    new = df[df.code == "new"]
    silent_mixed = int(((~new.refused) & (new.mixed > 0)).sum())
    print(f"\nnew code: {int(new.refused.sum())} of {len(new)} runs refused; silent runs with a group mixing people: "
          f"{silent_mixed}; groups mixing people even in the refused runs' partial answer: {int(new.mixed.sum())}; "
          f"slowest run {new.seconds.max():.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
