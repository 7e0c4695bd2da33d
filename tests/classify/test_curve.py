"""alzmri curve: frozen features, fine-tuning and scratch on growing, nested sets of training subjects, all scored on
the same subject-cv test folds; table, intervals, plot, report rows and kept cells. Tiny data (32x32, 1 epoch)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from classify.curve import bootstrap, parse_sizes, run_curve, subject_order
from classify.protocols import folds_for
from featurize.errors import AlzmriError
from tests.conftest import write_images


def _manifest(root: Path) -> Path:
    write_images(root, "folders", n_per_class=12, size=(32, 32))
    rows = [{"path": str(p.relative_to(root)), "label": p.parent.name, "subject": f"{p.parent.name}-{int(p.stem[3:]) // 2}"}
            for p in sorted(root.rglob("*.png"))]
    path = root / "manifest.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


@pytest.mark.tf
@pytest.mark.slow
def test_every_method_and_size_is_scored_on_the_same_subject_folds(tmp_path: Path, artifacts: Path) -> None:
    from featurize.dataset import dataset_id
    from featurize.run import featurize_layers
    from featurize.store import find_caches, load

    data = _manifest(tmp_path / "m")
    featurize_layers(data, backbone="mobilenetv2", weights="none", image_size="32x32", subjects="auto",
                     artifacts=artifacts, progress=False, engine="tf")
    logs: list[str] = []
    res = run_curve(data, sizes=(2, 0), weights="none", image_size="32x32", epochs=1, folds=2, n_boot=50, batch_size=8,
                    artifacts=artifacts, progress=False, log=logs.append, n_jobs=1)

    man = pd.read_csv(data)
    names = ["NonDemented", "MildDemented"]
    y = np.array([names.index(v) for v in man["label"]])
    groups = man["subject"].to_numpy(dtype=object)
    expected, _ = folds_for("subject-cv", y=y, groups=groups, split=None, seed=0, n_splits=2, class_names=names)
    path_of = dict(enumerate(man["path"]))
    # the curve's rows are the feature cache's, in its order: compare by path
    fs_paths = np.asarray(load(find_caches(dataset_id(data), artifacts)[0]).paths, dtype=object)
    for c in res.cells:
        assert not set(c["train"]) & set(c["test"])
    cells = {(c["method"], c["n"], c["fold"]): c for c in res.cells}
    assert {m for m, _, _ in cells} == {"frozen", "finetune", "scratch"} and {n for _, n, _ in cells} == {2, 0}
    for k, (_, te) in enumerate(expected, start=1):
        want = {path_of[i] for i in te}
        for (m, n, fold), c in cells.items():
            if fold == k:
                assert {fs_paths[i] for i in c["test"]} == want, (m, n, k)  # identical test folds for all
                subj_train = {groups[man["path"].tolist().index(fs_paths[i])] for i in c["train"]}
                assert not subj_train & {groups[i] for i in te}
        # nested training sets, identical across methods
        small = [set(cells[(m, 2, k)]["train"]) for m in ("frozen", "finetune", "scratch")]
        full = [set(cells[(m, 0, k)]["train"]) for m in ("frozen", "finetune", "scratch")]
        assert small[0] == small[1] == small[2] and full[0] == full[1] == full[2] and small[0] < full[0]
        assert cells[("frozen", 2, k)]["n_subjects"] == 2

    t = res.table
    assert len(t) == 6 and set(t["size"]) == {"2", "all"}
    for key in ("balanced_accuracy", "subject_balanced_accuracy"):
        assert ((t[f"{key}_lo"] <= t[key] + 1e-9) & (t[key] <= t[f"{key}_hi"] + 1e-9)).all()
    assert res.csv_path.is_file() and res.png_path is not None and res.png_path.stat().st_size > 5000
    report = pd.read_csv(artifacts / "report.csv", keep_default_na=False)
    assert set(report["features"]) >= {"curve:subjects=2", "curve:subjects=all"}

    logs.clear()
    again = run_curve(data, sizes=(2, 0), weights="none", image_size="32x32", epochs=1, folds=2, n_boot=50, batch_size=8,
                      artifacts=artifacts, progress=False, log=logs.append, n_jobs=1)
    assert sum("kept from an earlier run" in m for m in logs) == 12
    pd.testing.assert_frame_equal(again.table.drop(columns=["train_seconds"]), t.drop(columns=["train_seconds"]))


def test_subject_order_is_stratified_and_sizes_parse() -> None:
    groups = np.repeat([f"s{i}" for i in range(12)], 3)
    y = np.repeat([0] * 8 + [1] * 3 + [2] * 1, 3)
    order = subject_order(groups, y, seed=0)
    assert sorted(order) == sorted(set(groups)) and len(order) == 12
    label = {g: int(y[groups == g][0]) for g in order}
    assert {label[s] for s in order[:3]} == {0, 1, 2}  # every class in the smallest set
    assert [label[s] for s in order[3:]].count(0) == 7
    assert parse_sizes("40,10,all,10") == (10, 40, 0)
    with pytest.raises(AlzmriError, match="not a number of subjects"):
        parse_sizes("1,all")


def test_bootstrap_interval_brackets_the_pooled_score() -> None:
    rng = np.random.default_rng(0)
    groups = np.repeat([f"s{i}" for i in range(30)], 4)
    y = np.repeat(rng.integers(0, 3, 30), 4)
    scores = np.eye(3)[np.where(rng.random(120) < 0.7, y, (y + 1) % 3)]
    b = bootstrap(y, scores, groups, n_boot=200, seed=0)
    assert b["balanced_accuracy_lo"] < b["balanced_accuracy"] < b["balanced_accuracy_hi"]
    assert 0.5 < b["balanced_accuracy"] < 0.9 and b["balanced_accuracy_hi"] - b["balanced_accuracy_lo"] < 0.4


def test_finetune_options_reach_the_network_and_key_only_its_cells() -> None:
    from classify.cnn.run import BaselineConfig
    from classify.curve import CurveConfig, Rows, _cell_key

    default, trained = CurveConfig(), CurveConfig(unfreeze=1000, batchnorm="train")
    # the curve's defaults are baseline's, so a curve cell is the network `alzmri baseline` trains
    base = BaselineConfig(model="finetune")
    assert (default.cnn("finetune").unfreeze, default.cnn("finetune").batchnorm) == (base.unfreeze, base.batchnorm)
    ft = trained.cnn("finetune")
    assert (ft.unfreeze, ft.batchnorm) == (1000, "train")
    spec = ft.net_spec(n_classes=2, choice=None)
    assert spec.batchnorm == "train" and spec.unfreeze == 1000 and spec.settings()["batchnorm"] == "train"
    paths = np.array([f"s{i}.png" for i in range(6)], dtype=object)
    rows = Rows(paths=paths, y=np.array([0, 1] * 3), groups=paths, class_names=["a", "b"],
                folds=[(np.arange(3), np.arange(3, 6))], dataset_id="d")
    train = np.arange(3)
    key = {m: (_cell_key(default, rows, m, 0, 1, train), _cell_key(trained, rows, m, 0, 1, train))
           for m in ("frozen", "finetune", "scratch")}
    assert key["finetune"][0] != key["finetune"][1]  # a cell of other settings is never kept as this one
    assert key["frozen"][0] == key["frozen"][1] and key["scratch"][0] == key["scratch"][1]
    with pytest.raises(AlzmriError, match="--batchnorm"):
        CurveConfig(batchnorm="sometimes")
