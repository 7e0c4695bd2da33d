"""The design card's own commands (issue 23): `featurize --backbone mobilenet`, then `classify --head svm`, give a
report CSV. The scripts are the ones pyproject.toml declares in [project.scripts], each run as its `module:function`
in a fresh interpreter, in a fresh artifacts folder."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from typer.testing import CliRunner

import cli
from featurize.dataset import dataset_id
from featurize.latest import LAST_FILE, last_featurized, record_last
from tests.conftest import write_images

pytestmark = [pytest.mark.tf, pytest.mark.slow]

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parents[1]
# random-init weights and tiny inputs: no download, and a short TF run
FAST = ["--weights", "none", "--image-size", "32x32", "--no-progress"]


def declared_scripts() -> dict[str, str]:
    """[project.scripts] of this checkout's pyproject.toml: name -> ``module:function``."""
    with open(REPO / "pyproject.toml", "rb") as fh:
        return dict(tomllib.load(fh)["project"]["scripts"])


def run_script(name: str, args: list[str], *, cwd: Path, artifacts: Path) -> subprocess.CompletedProcess[str]:
    """Run console script ``name`` as installed: its entry-point function, with ``args`` as the command line."""
    module, function = declared_scripts()[name].split(":")
    code = f"import sys; sys.argv[0] = {name!r}; from {module} import {function}; {function}()"
    env = {**os.environ, "PYTHONPATH": str(REPO), "ALZMRI_ARTIFACTS": str(artifacts), "TERMINAL_WIDTH": "200",
           "CUDA_VISIBLE_DEVICES": "-1"}
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


def test_the_card_scripts_are_declared() -> None:
    assert declared_scripts() == {"alzmri": "cli:main", "featurize": "cli:featurize_main", "classify": "cli:classify_main"}


@pytest.fixture(scope="module")
def card(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The two card commands typed one after the other, in a fresh folder with a fresh artifacts folder."""
    home = tmp_path_factory.mktemp("card")
    write_images(home / "data")
    art = home / "artifacts"
    feat = run_script("featurize", ["--data", "data", "--backbone", "mobilenet", *FAST], cwd=home, artifacts=art)
    assert feat.returncode == 0, feat.stderr[-3000:]
    cls = run_script("classify", ["--head", "svm", "--no-progress"], cwd=home, artifacts=art)
    assert cls.returncode == 0, cls.stderr[-3000:]
    return {"home": home, "art": art, "featurize": feat, "classify": cls}


def test_featurize_then_classify_give_a_report_csv(card: dict[str, Any]) -> None:
    report = pd.read_csv(card["art"] / "report.csv")
    assert len(report) == 1
    row = report.iloc[0]
    assert (row["dataset"], row["backbone"], row["head"], row["protocol"], row["task"]) == (
        dataset_id(card["home"] / "data"), "mobilenet", "svm", "official", "stages")
    assert (row["n_train"], row["n_test"]) == (10, 10)
    assert 0.0 <= row["balanced_accuracy"] <= 1.0 and not math.isnan(row["balanced_accuracy"])
    assert Path(row["model_path"]).is_file()


def test_classify_says_which_data_and_backbone_it_took(card: dict[str, Any]) -> None:
    said = [ln for ln in card["classify"].stderr.splitlines() if ln.startswith("classify: --data")]
    assert said == [f"classify: --data {(card['home'] / 'data').resolve()} --backbone mobilenet "
                    f"(featurized last, per {card['art'] / LAST_FILE})"]


def test_a_later_featurize_is_the_one_classify_takes(card: dict[str, Any]) -> None:
    home, art = card["home"], card["art"]
    write_images(home / "data2", seed=1)
    # same backbone, weights and size: the model card of the first run serves this one without TF
    feat = run_script("featurize", ["--data", "data2", "--backbone", "mobilenet", *FAST], cwd=home, artifacts=art)
    assert feat.returncode == 0, feat.stderr[-3000:]
    cls = run_script("classify", ["--head", "logreg", "--no-progress"], cwd=home, artifacts=art)
    assert cls.returncode == 0, cls.stderr[-3000:]
    report = pd.read_csv(art / "report.csv")
    assert set(report.loc[report["head"] == "logreg", "dataset"]) == {dataset_id(home / "data2")}
    # a fully cached rerun of the first data is what the user ran last, so it takes the record back
    again = run_script("featurize", ["--data", "data", "--backbone", "mobilenet", *FAST], cwd=home, artifacts=art)
    assert again.returncode == 0 and "processed 0" in again.stdout, again.stderr[-3000:]
    assert last_featurized(art).data == str((home / "data").resolve())


def test_the_scripts_have_the_umbrella_commands_help(tmp_path: Path) -> None:
    for name in ("featurize", "classify"):
        alone = run_script(name, ["--help"], cwd=tmp_path, artifacts=tmp_path)
        umbrella = run_script("alzmri", [name, "--help"], cwd=tmp_path, artifacts=tmp_path)
        assert alone.returncode == umbrella.returncode == 0
        assert f"Usage: {name} [OPTIONS]" in alone.stdout
        words = alone.stdout.replace(f"Usage: {name} ", f"Usage: alzmri {name} ").split()  # rich pads to the width
        assert words == umbrella.stdout.split()


# --- the record, in-process (no TF) ----------------------------------------------------------------------------

@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """What classify passes to the library (the library call itself is replaced)."""
    seen: dict[str, Any] = {}

    def fake(data: str, **kw: Any) -> None:
        seen.update(kw, data=data)
        raise cli.AlzmriError("captured")

    monkeypatch.setattr("classify.run.classify_dataset", fake)
    return seen


def test_classify_takes_the_recorded_backbone_unless_told(tmp_path: Path, captured: dict[str, Any]) -> None:
    art = tmp_path / "art"
    record_last(data=tmp_path / "somewhere", backbone="mobilenet", dataset_id="x", caches=[], artifacts=art)
    runner = CliRunner()
    res = runner.invoke(cli.classify_app, ["--head", "svm", "--artifacts", str(art)])
    assert "captured" in res.stderr
    assert (captured["data"], captured["backbone"]) == (str((tmp_path / "somewhere").resolve()), "mobilenet")
    runner.invoke(cli.classify_app, ["--backbone", "mobilenetv2", "--artifacts", str(art)])
    assert captured["backbone"] == "mobilenetv2"
    runner.invoke(cli.classify_app, ["--data", str(tmp_path), "--artifacts", str(art)])
    assert (captured["data"], captured["backbone"]) == (str(tmp_path), "all")  # given data: every cached backbone


def test_classify_without_data_or_record_is_one_line(tmp_path: Path) -> None:
    res = CliRunner().invoke(cli.classify_app, ["--artifacts", str(tmp_path)])
    assert res.exit_code == 2 and res.stderr.count("\n") == 1
    assert "no --data given" in res.stderr and "featurize --data" in res.stderr
    (tmp_path / LAST_FILE).write_text("{half")
    res = CliRunner().invoke(cli.classify_app, ["--artifacts", str(tmp_path)])
    assert res.exit_code == 2 and LAST_FILE in res.stderr and res.stderr.count("\n") == 1


def test_a_failed_featurize_keeps_the_record(tmp_path: Path) -> None:
    record_last(data=tmp_path / "good", backbone="vgg16", dataset_id="good-1", caches=[tmp_path / "c.h5"], artifacts=tmp_path)
    res = CliRunner().invoke(cli.featurize_app, ["--data", str(tmp_path / "missing"), "--artifacts", str(tmp_path)])
    assert res.exit_code == 3
    last = last_featurized(tmp_path)
    assert (last.data, last.backbone, last.caches) == (str((tmp_path / "good").resolve()), "vgg16", (str(tmp_path / "c.h5"),))
    assert [p.name for p in tmp_path.iterdir()] == [LAST_FILE]  # no temporary file left beside it
    assert json.loads((tmp_path / LAST_FILE).read_text())["dataset_id"] == "good-1"
