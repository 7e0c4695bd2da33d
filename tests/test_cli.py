"""The command line: choices listed in --help, one-line usage errors with exit 2, bad data exit 3, and no TensorFlow
import in the CLI for predict on a model card, a fully cached featurize, and report (run as real subprocesses)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import cli
from classify.cnn.spec import BATCHNORM_MODES, MODELS
from classify.curve import METHODS as CURVE_METHODS
from classify.heads import HEADS
from classify.protocols import PROTOCOLS
from classify.report import FORMATS as REPORT_FORMATS
from classify.subject_level import LEVELS
from classify.subject_level import POOLINGS as SUBJECT_POOLINGS
from classify.sweep import CRITERIA, sweep_lists
from classify.transfer import VIEWS as REPORT_VIEWS
from featurize.backbones import BACKBONES, POOLINGS
from featurize.devices import DEVICE_MODES, PRECISIONS
from featurize.engines import ENGINES
from featurize.images import RESIZE_MODES
from featurize.synth import FORMATS as IMAGE_FORMATS
from featurize.synth import SPLITS
from featurize.synth_volumes import FORMATS as VOLUME_FORMATS
from featurize.volume_dataset import DEFAULT_LABEL_COLUMN
from featurize.volumes import DEFAULT_N_SLICES, VIEWS
from tests.conftest import write_images

REPO = Path(__file__).resolve().parents[1]
NAMES = tuple(BACKBONES)

# every command, with the closed sets its --help must list (taken from the library, not from cli.py)
CHOICES: dict[str, list[tuple[str, ...]]] = {
    "featurize": [NAMES, POOLINGS, RESIZE_MODES, ENGINES, PRECISIONS, DEVICE_MODES, VIEWS],
    "classify": [(*NAMES, "all"), (*HEADS, "all"), PROTOCOLS, LEVELS, SUBJECT_POOLINGS],
    "report": [REPORT_FORMATS, REPORT_VIEWS],
    "baseline": [MODELS, NAMES, PRECISIONS, DEVICE_MODES, PROTOCOLS, VIEWS, BATCHNORM_MODES],
    "sweep": [NAMES, (*HEADS, "all"), CRITERIA, LEVELS, SUBJECT_POOLINGS],
    "subjects": [],
    "synth": [IMAGE_FORMATS, SPLITS, VOLUME_FORMATS],
    "demo": [NAMES],
    "predict": [VIEWS],
    "weights": [],
    "export": [],
    "curve": [CURVE_METHODS, HEADS, NAMES, BATCHNORM_MODES],
}


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    """A runner whose help is rendered wide enough that no choice list is wrapped."""
    import typer.rich_utils

    monkeypatch.setattr(typer.rich_utils, "MAX_WIDTH", 1000)
    return CliRunner()


def test_every_command_is_covered() -> None:
    assert sorted(c.name or c.callback.__name__ for c in cli.app.registered_commands) == sorted(CHOICES)


@pytest.mark.parametrize("command", sorted(CHOICES))
def test_help_lists_the_choices(runner: CliRunner, command: str) -> None:
    res = runner.invoke(cli.app, [command, "--help"])
    assert res.exit_code == 0, res.output
    for choices in CHOICES[command]:
        assert "|".join(choices) in res.output, (command, choices)


def test_mirrored_names_equal_the_library() -> None:
    # cli.py repeats these to stay free of scikit-learn and pandas at start-up; they must not drift
    assert (cli.HEADS, cli.PROTOCOLS, cli.REPORT_FORMATS, cli.CRITERIA, cli.IMAGE_FORMATS, cli.SPLITS, cli.CURVE_METHODS) == (
        tuple(HEADS), tuple(PROTOCOLS), tuple(REPORT_FORMATS), tuple(CRITERIA), tuple(IMAGE_FORMATS), tuple(SPLITS),
        tuple(CURVE_METHODS))
    # the 3-D scan options: choices and the defaults --help shows
    from typing import get_args

    assert (get_args(cli.View), cli.VOLUME_FORMATS, cli.LABEL_COLUMN, cli.N_SLICES) == (
        tuple(VIEWS), tuple(VOLUME_FORMATS), DEFAULT_LABEL_COLUMN, DEFAULT_N_SLICES)
    assert (cli.LEVELS, cli.SUBJECT_POOLINGS, cli.REPORT_VIEWS) == (LEVELS, SUBJECT_POOLINGS, REPORT_VIEWS)


def test_baseline_option_defaults_are_the_library_defaults() -> None:
    import inspect

    from classify.cnn.run import BaselineConfig
    from classify.cnn.spec import DEFAULT_LR

    lib = BaselineConfig()
    resolved = {"learning_rate": DEFAULT_LR, "head_epochs": lib.n_head_epochs}  # None in the config: the model's default
    checked = []
    for name, param in inspect.signature(cli.baseline).parameters.items():
        if hasattr(lib, name) and param.default.default is not ...:
            assert param.default.default == resolved.get(name, getattr(lib, name)), name
            checked.append(name)
    assert {"fine_learning_rate", "label_smoothing", "unfreeze", "patience", "max_train_minutes"} <= set(checked)


@pytest.mark.parametrize("args, option", [
    (["featurize", "--data", ".", "--pooling", "mean"], "--pooling"),
    (["featurize", "--data", ".", "--engine", "cuda"], "--engine"),
    (["featurize", "--data", ".", "--view", "transverse"], "--view"),
    (["featurize", "--data", ".", "--slices", "0"], "--slices"),
    (["classify", "--data", ".", "--head", "logreg,forest"], "--head"),
    (["classify", "--data", ".", "--protocol", "kfold"], "--protocol"),
    (["classify", "--data", ".", "--backbone", "alexnet"], "--backbone"),
    (["report", "--format", "xml"], "--format"),
    (["baseline", "--data", ".", "--model", "transformer"], "--model"),
    (["sweep", "--data", ".", "--criterion", "accuracy"], "--criterion"),
    (["sweep", "--data", ".", "--backbones", "mobilenetv2,alexnet"], "--backbones"),
    (["synth", "--out", ".", "--split", "random"], "--split"),
    (["demo", "--backbone", "alexnet"], "--backbone"),
    (["predict", "x.png"], "--model"),
])
def test_bad_choice_is_one_line_and_exit_2(runner: CliRunner, args: list[str], option: str, tmp_path: Path) -> None:
    res = runner.invoke(cli.app, [*args], env={"ALZMRI_ARTIFACTS": str(tmp_path)})
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and option in lines[0], res.stderr
    assert not list(tmp_path.iterdir())  # refused before any work


def test_unknown_command_is_one_line(runner: CliRunner) -> None:
    res = runner.invoke(cli.app, ["featurise"])
    assert res.exit_code == 2 and res.stderr.count("\n") == 1 and "featurise" in res.stderr


def test_comma_lists_and_case_are_accepted(runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = {}

    def fake(data: str, **kw: object) -> object:
        seen.update(kw, data=data)
        raise cli.AlzmriError("stop here")

    monkeypatch.setattr("classify.run.classify_dataset", fake)
    res = runner.invoke(cli.app, ["classify", "--data", str(tmp_path), "--head", "SVM, logreg", "-b", "MobileNetV2",
                                  "--artifacts", str(tmp_path)])
    assert res.exit_code == 2 and "stop here" in res.stderr
    assert seen["heads"] == "svm,logreg" and seen["backbone"] == "mobilenetv2"


def test_bad_data_exits_3(runner: CliRunner, tmp_path: Path) -> None:
    res = runner.invoke(cli.app, ["featurize", "--data", str(tmp_path / "missing"), "--artifacts", str(tmp_path / "a")])
    assert res.exit_code == 3 and "missing" in res.stderr and res.stderr.count("\n") == 1


def test_missing_cache_exits_4(runner: CliRunner, tmp_path: Path) -> None:
    write_images(tmp_path / "data")
    res = runner.invoke(cli.app, ["classify", "--data", str(tmp_path / "data"), "--artifacts", str(tmp_path / "a")])
    assert res.exit_code == 4 and "featurize --data" in res.stderr


def test_sweep_lists() -> None:
    assert sweep_lists(backbones="a, b", layers="last,mid", heads="svm", tasks="stages,binary") == (
        ["a", "b"], ["last", "mid"], ["svm"], ["stages", "binary"])
    # a layer choice of several layers, and a label map, carry commas of their own
    assert sweep_lists(backbones="a", layers="x,y;last", heads="all", tasks="A=p,*=q;stages") == (
        ["a"], ["x,y", "last"], ["all"], ["A=p,*=q", "stages"])
    assert sweep_lists(backbones="a", layers="last", heads="all", tasks="A=p,*=q")[3] == ["A=p,*=q"]


def test_importing_the_cli_imports_no_tensorflow_sklearn_or_pandas() -> None:
    code = "import json, sys, cli; print(json.dumps([m in sys.modules for m in ('tensorflow', 'keras', 'sklearn', 'pandas')]))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [False, False, False, False]


# --- the real CLI in a subprocess: which commands import TensorFlow ---------------------------------------------

needs_onnx = pytest.mark.skipif(not (importlib.util.find_spec("onnxruntime") or importlib.util.find_spec("openvino"))
                                or importlib.util.find_spec("tf2onnx") is None,
                                reason="needs the onnx extra (an ONNX runtime and tf2onnx) for exports and model cards")

# Runs cli.py as `python cli.py ARGS` would (runpy, __main__), then writes whether TF got imported to a file.
_WRAPPER = """
import atexit, json, runpy, sys
flag, args = sys.argv[1], sys.argv[2:]
atexit.register(lambda: open(flag, "w").write(json.dumps("tensorflow" in sys.modules)))
sys.argv = ["cli.py", *args]
runpy.run_path("cli.py", run_name="__main__")
"""


def run_cli(args: list[str], tmp: Path) -> tuple[subprocess.CompletedProcess[str], bool]:
    """Run the real CLI in a fresh interpreter; (the process, whether tensorflow was imported)."""
    flag = tmp / f"tf-{len(list(tmp.glob('tf-*')))}.json"
    env = {**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": "-1"}  # no GPU: the card path applies
    out = subprocess.run([sys.executable, "-c", _WRAPPER, str(flag), *args], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=600)
    return out, json.loads(flag.read_text())


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(data, artifacts, bundle): featurized once with TF (engine auto leaves the export and card), then logreg."""
    tmp = tmp_path_factory.mktemp("cli")
    data, art = tmp / "data", tmp / "artifacts"
    write_images(data)
    common = ["--backbone", "mobilenetv2", "--weights", "none", "--image-size", "32x32", "--subjects", "none"]
    out, tf = run_cli(["featurize", "--data", str(data), *common, "--artifacts", str(art), "--no-progress"], tmp)
    assert out.returncode == 0, out.stderr[-3000:]
    assert tf  # the first run must build the backbone; this is what the later runs avoid
    if not list((art / "engines").glob("*.card.json")):
        pytest.skip(f"no model card was written (no ONNX export on this machine): {out.stderr[-500:]}")
    out, _ = run_cli(["classify", "--data", str(data), "--head", "logreg", "--artifacts", str(art), "--no-progress"], tmp)
    assert out.returncode == 0, out.stderr[-3000:]
    (path,) = (art / "models").glob("*/*logreg*.joblib")
    return data, art, path


@pytest.mark.slow
@pytest.mark.tf
@needs_onnx
def test_predict_on_a_model_card_never_imports_tensorflow(bundle: tuple[Path, Path, Path], tmp_path: Path) -> None:
    data, art, model = bundle
    out, tf = run_cli(["predict", "--model", str(model), str(data / "test"), "--csv", "--artifacts", str(art)], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = out.stdout.strip().splitlines()
    assert rows[0].startswith("file,predicted") and len(rows) == 1 + 10
    assert tf is False


@pytest.mark.slow
@pytest.mark.tf
@needs_onnx
def test_a_fully_cached_featurize_never_imports_tensorflow(bundle: tuple[Path, Path, Path], tmp_path: Path) -> None:
    data, art, _ = bundle
    out, tf = run_cli(["featurize", "--data", str(data), "--backbone", "mobilenetv2", "--weights", "none",
                       "--image-size", "32x32", "--subjects", "none", "--artifacts", str(art), "--no-progress"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "processed 0, reused 20" in out.stdout
    assert tf is False


@pytest.mark.slow
@pytest.mark.tf
@needs_onnx
def test_report_never_imports_tensorflow(bundle: tuple[Path, Path, Path], tmp_path: Path) -> None:
    _, art, _ = bundle
    out, tf = run_cli(["report", "--format", "csv", "--artifacts", str(art)], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith("dataset,") and ",logreg," in out.stdout
    assert tf is False


@pytest.mark.slow
@pytest.mark.tf
@needs_onnx
def test_predict_on_the_tf_path_imports_tensorflow_quietly(bundle: tuple[Path, Path, Path], tmp_path: Path) -> None:
    # the same signed bundle with an artifacts folder that holds no engines: predict must rebuild the backbone with TF
    data, _, model = bundle
    moved = tmp_path / "art" / "models" / model.parent.name
    moved.mkdir(parents=True)
    for p in (model, model.with_name(model.name + ".sig")):
        (moved / p.name).write_bytes(p.read_bytes())
    out, tf = run_cli(["predict", "--model", str(moved / model.name), str(data / "test"), "--csv", "--artifacts",
                       str(tmp_path / "art")], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert tf is True and len(out.stdout.strip().splitlines()) == 1 + 10
    # TF's C++ start-up lines (absl, CUDA probing, oneDNN) must not reach the user's terminal
    assert not [ln for ln in out.stderr.splitlines() if any(w in ln for w in ("absl", "cuda", "cuInit", "oneDNN"))], out.stderr


def test_trust_choices_equal_the_library() -> None:
    from classify.calibration import CALIBRATIONS
    from classify.explain import METHODS

    assert cli.CALIBRATIONS == CALIBRATIONS and cli.EXPLAIN_METHODS == METHODS


@pytest.mark.parametrize("fmt, suffix", [("nifti", ".nii.gz"), ("analyze", ".hdr"), ("dicom", "")])
def test_synth_volumes_writes_scans_that_scan_volumes_reads(runner: CliRunner, tmp_path: Path, fmt: str, suffix: str) -> None:
    from featurize.volume_dataset import scan_volumes

    out = tmp_path / fmt
    res = runner.invoke(cli.app, ["synth", "--out", str(out), "--volumes", "--format", fmt, "--subjects-per-class", "1",
                                  "--size", "40x48"])
    assert res.exit_code == 0, res.output
    assert "wrote 4 scans of 4 subjects" in res.stdout
    vds = scan_volumes(out)
    assert len(vds.table) == 4 and vds.table["subject"].nunique() == 4
    assert all(p.endswith(suffix) for p in vds.table["path"])
    bad = runner.invoke(cli.app, ["synth", "--out", str(tmp_path / "x"), "--volumes", "--format", "png"])
    assert bad.exit_code == 2 and "nifti" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
