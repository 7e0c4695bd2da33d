"""Real concurrent writers: two processes upserting report.csv, and two baseline runs of one model."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.reliability.helpers import REPO, env, error_lines, run

# each writer waits for the go file, then upserts 50 rows one by one: keys w<id>-0..39 are its own,
# shared-0..9 are written by both (either value may win, but each key exactly once)
WRITER = """
import os, sys, time
from pathlib import Path
from classify.report import upsert_rows
me, report, go = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
while not go.exists():
    time.sleep(0.001)
for i in range(50):
    head = f"w{me}-{i}" if i < 40 else f"shared-{i - 40}"
    upsert_rows(report, [dict(dataset="d", backbone="b", weights="w", layers="last", task="stages", head=head,
                              protocol="official", balanced_accuracy=float(me), n_train=i)])
"""


@pytest.mark.slow
def test_two_processes_upserting_50_rows_each_lose_nothing_and_never_duplicate(tmp_path: Path) -> None:
    report, go = tmp_path / "report.csv", tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(k), str(report), str(go)], cwd=REPO, env=env(),
                              stderr=subprocess.PIPE, text=True) for k in (1, 2)]
    time.sleep(2.0)  # both have imported pandas and wait
    go.touch()
    for p in procs:
        _, err = p.communicate(timeout=240)
        assert p.returncode == 0, err
    df = pd.read_csv(report)
    assert not df["head"].duplicated().any()
    expected = {f"w{k}-{i}" for k in (1, 2) for i in range(40)} | {f"shared-{i}" for i in range(10)}
    assert set(df["head"]) == expected and len(df) == 90
    mine = df[df["head"].str.startswith("w")]
    assert (mine["balanced_accuracy"] == mine["head"].str[1].astype(float)).all()  # every row kept its own values
    assert not list(tmp_path.glob(".report.csv.tmp-*"))


HOLDER = """
import sys, time
from pathlib import Path
from featurize.atomic import exclusive
with exclusive(Path(sys.argv[1]), what="test"):
    Path(sys.argv[2]).touch()
    time.sleep(120)
"""


@pytest.mark.slow
def test_a_second_baseline_of_the_same_model_is_refused_at_once_naming_the_holder(tmp_path: Path) -> None:
    from featurize.config import models_dir
    from featurize.dataset import dataset_id
    from tests.conftest import write_images

    data, art = tmp_path / "data", tmp_path / "art"
    write_images(data, "kaggle", n_per_class=3)
    lock = models_dir(dataset_id(data), art) / ".scratch__end-to-end.lock"
    ready = tmp_path / "ready"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock), str(ready)], cwd=REPO, env=env())
    try:
        deadline = time.time() + 60
        while not ready.exists() and time.time() < deadline:
            time.sleep(0.05)
        assert ready.exists()
        t0 = time.perf_counter()
        second = run(["baseline", "--data", data, "--model", "scratch", "--epochs", "1", "--artifacts", art,
                      "--no-progress"], timeout=120)
        took = time.perf_counter() - t0
    finally:
        holder.kill()
        holder.wait()
    assert second.returncode == 4, second.stderr
    lines = error_lines(second.stderr)
    assert len(lines) == 1 and f"pid {holder.pid}" in lines[0] and "scratch__end-to-end.keras" in lines[0]
    assert "tensorflow" not in second.stderr.lower() and took < 60  # refused before any training
    assert not (art / "report.csv").exists()
