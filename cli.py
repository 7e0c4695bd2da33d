"""alzmri command line: a thin typer layer over the featurize and classify libraries.

``alzmri`` is the umbrella; ``featurize`` and ``classify`` are the same two commands installed as scripts of their own
(the design card's form). Nothing here imports TensorFlow: the library does, quietly, only where it must.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable, Literal, Optional, get_args

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ start-up chatter off the terminal

import typer
from rich.console import Console
from rich.markup import escape

from classify.cnn.spec import BATCHNORM_MODES, MODELS
from featurize.backbones import BACKBONES, POOLINGS
from featurize.config import report_path
from featurize.devices import DEVICE_MODES, PRECISIONS
from featurize.engines import ENGINES
from featurize.errors import AlzmriError, interrupted
from featurize.images import RESIZE_MODES
from featurize.options import choose
from featurize.volumes.slicing import VIEWS

# The modules that define these import scikit-learn (classify.heads, classify.evaluate: about 2 s) or pandas
# (classify.report, classify.sweep, featurize.synth: about 0.5 s), too slow for every start of the CLI: the names
# are repeated here, and tests/test_cli.py checks that they equal the library's.
HEADS = ("logreg", "svm", "mlp")  # classify.heads.HEADS
PROTOCOLS = ("official", "subject-cv", "slice-cv")  # classify.evaluate.PROTOCOLS
REPORT_FORMATS = ("table", "csv", "markdown", "json")  # classify.report.FORMATS
CRITERIA = ("balanced_accuracy", "subject_balanced_accuracy", "roc_auc", "subject_roc_auc")  # classify.sweep.CRITERIA
IMAGE_FORMATS = ("png", "jpg")  # featurize.synth.FORMATS
SPLITS = ("slice", "subject")  # featurize.synth.SPLITS
CALIBRATIONS = ("none", "sigmoid", "isotonic")  # classify.calibration.CALIBRATIONS
EXPLAIN_METHODS = ("auto", "cam", "occlusion")  # classify.explain.METHODS
VOLUME_FORMATS = ("nifti", "analyze", "dicom")  # featurize.synth_volumes.FORMATS
LABEL_COLUMN = "diagnosis"  # featurize.volume_dataset.DEFAULT_LABEL_COLUMN
N_SLICES = 32  # featurize.volumes.DEFAULT_N_SLICES
LEVELS = ("slice", "subject")  # classify.subject_level.LEVELS
SUBJECT_POOLINGS = ("mean", "meanstd", "quantiles")  # classify.subject_level.POOLINGS
REPORT_VIEWS = ("rows", "transfer")  # classify.transfer.VIEWS
CURVE_METHODS = ("frozen", "finetune", "scratch")  # classify.curve.METHODS

# Closed sets as Literal types: typer lists them in --help and refuses anything else (exit 2); the library checks
# them again, since it is an entry point of its own.
Backbone = Literal[tuple(BACKBONES)]  # type: ignore[valid-type]
Pooling = Literal[POOLINGS]  # type: ignore[valid-type]
Resize = Literal[RESIZE_MODES]  # type: ignore[valid-type]
Engine = Literal[ENGINES]  # type: ignore[valid-type]
Precision = Literal[PRECISIONS]  # type: ignore[valid-type]
Devices = Literal[DEVICE_MODES]  # type: ignore[valid-type]
Protocol = Literal[PROTOCOLS]  # type: ignore[valid-type]
ReportFormat = Literal[REPORT_FORMATS]  # type: ignore[valid-type]
ImageFormat = Literal[IMAGE_FORMATS]  # type: ignore[valid-type]
Split = Literal[SPLITS]  # type: ignore[valid-type]
Criterion = Literal[CRITERIA]  # type: ignore[valid-type]
CnnModel = Literal[MODELS]  # type: ignore[valid-type]
BatchNormMode = Literal[BATCHNORM_MODES]  # type: ignore[valid-type]
Calibration = Literal[CALIBRATIONS]  # type: ignore[valid-type]
ExplainMethod = Literal[EXPLAIN_METHODS]  # type: ignore[valid-type]
UnfreezeOpt = typer.Option(30, "--unfreeze", min=0, help="finetune: top base layers to unfreeze after the warm-up (BatchNorm: see --batchnorm).")
BatchNormOpt = typer.Option("frozen", "--batchnorm", help="finetune: frozen = the base's BatchNorm in inference mode with ImageNet statistics; train = every BatchNorm in training mode, its averages re-estimated on training slices after each epoch, scale and offset trained where the layers are unfrozen.")
CalibrateOpt = typer.Option("none", "--calibrate", help="Calibrate probabilities inside each training part (subject-grouped inner folds).")
InnerSlicesOpt = typer.Option(0, "--inner-slices", min=0, help="Slice heads: grid-search on N evenly spaced slices per subject, then refit on all (0: all slices).")
View = Literal[VIEWS]  # type: ignore[valid-type]
SynthFormat = Literal[(*IMAGE_FORMATS, *VOLUME_FORMATS)]  # type: ignore[valid-type]
Level = Literal[LEVELS]  # type: ignore[valid-type]
SubjectPooling = Literal[SUBJECT_POOLINGS]  # type: ignore[valid-type]
ReportView = Literal[REPORT_VIEWS]  # type: ignore[valid-type]

# typer vendors click in recent versions; reach click's UsageError through an exported subclass
_UsageError = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def _usage_line(exc: Exception) -> typer.Exit:
    """Print a click usage error as one line (not typer's boxed panel); the Exit to raise (code 2)."""
    msg = exc.format_message().replace("Value error, ", "")  # type: ignore[attr-defined]
    ctx = getattr(exc, "ctx", None)
    where = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
    err.print(f"[bold red]error:[/] {escape(msg)}{escape(where)}", highlight=False, soft_wrap=True)
    return typer.Exit(getattr(exc, "exit_code", 2))


class _Command(typer.core.TyperCommand):
    """A typer command whose usage errors (bad choice, missing option) are one line on stderr and exit 2."""

    def make_context(self, info_name: str | None, args: list[str], parent: Any = None, **extra: Any) -> Any:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except _UsageError as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":  # typer prints the help for it: not an error line
                raise
            raise _usage_line(exc) from None


class _Group(typer.core.TyperGroup):
    """The umbrella group, with the same one-line usage errors (an unknown command, say)."""

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        try:
            return super().resolve_command(ctx, args)
        except _UsageError as exc:
            raise _usage_line(exc) from None


def _one_of(choices: tuple[str, ...], *, extra: tuple[str, ...] = ()) -> Callable[[str], str]:
    """A typer parser for a comma list drawn from ``choices`` (plus ``extra`` words such as ``all``)."""
    valid = (*choices, *extra)

    def parse(text: str) -> str:
        items = [t.strip().lower() for t in str(text).split(",") if t.strip()]
        bad = [t for t in items if t not in valid] or ([] if items else [str(text)])
        if bad:
            raise typer.BadParameter(f"{bad[0]!r} is not one of {', '.join(map(repr, valid))} (a comma list is allowed)")
        return ",".join(items)

    return parse


def _metavar(choices: tuple[str, ...], *, extra: tuple[str, ...] = ()) -> str:
    return f"<{'|'.join((*choices, *extra))}>,..."


app = typer.Typer(cls=_Group, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Stage Alzheimer's disease from brain MRI slices with frozen CNN features, scikit-learn heads, and honest subject-aware evaluation.")
ArtifactsOpt = typer.Option(None, "--artifacts", help="Output folder for everything (default: $ALZMRI_ARTIFACTS or ./artifacts).")
DataOpt = typer.Option(..., "--data", help="Data root (ROOT/{train,test}/<Class>/*, or ROOT/<Class>/*) or a CSV manifest path,label[,split,subject].")
SubjectsOpt = typer.Option("auto", "--subjects", help="auto (manifest column, else inferred) | infer | column | regex:PATTERN | none.")
PrecisionOpt = typer.Option("float32", "--precision", help="mixed: float16 on GPU, bfloat16 on CPU (TF engine; see docs/gpu.md).")
ClusterOpt = typer.Option(None, "--cluster", metavar="<local[:N]|tcp://HOST:PORT|scheduler-file:PATH>",
                          help="Run on a Dask cluster (docs/cluster.md): local:N worker processes on 127.0.0.1, or a scheduler.")
DevicesOpt = typer.Option("auto", "--devices", help="auto: mirrored over all GPUs when there are 2+ (TF engine; see docs/gpu.md).")
ProtocolOpt = typer.Option("official", "--protocol", help="official: the data's own test split; subject-cv: whole subjects held out; slice-cv: random slices (leaky).")
# 3-D scans (NIfTI, Analyze, MGH, DICOM series, BIDS): how each becomes slices. Defaults and why: README "Your own scans".
# typer takes no Literal inside a list (a repeatable option): the View choices are checked by a parser instead.
ViewOpt = typer.Option(["axial"], "--view", parser=_one_of(get_args(View)), metavar=_metavar(get_args(View)), help="3-D scans: slice orientation; repeat for several (default axial, the plane of the Kaggle/OASIS slices).")
SlicesOpt = typer.Option(N_SLICES, "--slices", min=1, help="3-D scans: slices per view, evenly spaced inside the brain's extent (default 32, as many as the Kaggle export has per person).")
SeriesOpt = typer.Option(None, "--series", help="3-D scans: keep DICOM series whose SeriesDescription matches this regex (default: every 3-D anatomical series).")
LabelColumnOpt = typer.Option(LABEL_COLUMN, "--label-column", help="BIDS root: the participants.tsv column holding the class.")
VolumeIndexOpt = typer.Option(None, "--volume-index", min=0, help="4-D files: which volume to read (default: the first, with a note).")


def _volume_options(view: list[str], slices: int, series: str | None, label_column: str, volume_index: int | None) -> Any:
    from featurize.volume_featurize import VolumeOptions

    views = tuple(v for item in view for v in item.split(",") if v)
    return VolumeOptions(views=views, n_slices=slices, series=series, label_column=label_column,
                         volume_index=volume_index)


def _say(msg: str) -> None:
    err.print(msg, highlight=False, markup=False)


def _fail(message: str, code: int = 2) -> None:
    """Print one error line and exit non-zero."""
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _run(fn: Callable[[], Any]) -> Any:
    """Run a library call; a user error becomes one line on stderr and a non-zero exit."""
    try:
        return fn()
    except AlzmriError as exc:
        _fail(str(exc), exc.exit_code)
    except BaseException as exc:
        if not interrupted(exc):  # Ctrl-C, also wrapped by a C extension
            raise
        err.print("[bold red]interrupted[/]; rerun the same command to resume", highlight=False)
        raise typer.Exit(130) from None


@app.callback()
def _root() -> None:
    """Stage Alzheimer's disease from brain MRI slices."""


@app.command(cls=_Command)
def featurize(
    data: Optional[str] = typer.Option(None, "--data", help="Data root or CSV manifest."),
    backbone: Optional[Backbone] = typer.Option(None, "--backbone", "-b", case_sensitive=False, help="Backbone (--list shows inputs and widths) [default: the --weights entry's, else mobilenetv2]."),
    weights: str = typer.Option("imagenet", "--weights", help="imagenet | none (random init) | a weights catalog NAME (alzmri weights) | PATH to a Keras weights file."),
    image_size: Optional[str] = typer.Option(None, "--image-size", help="WIDTHxHEIGHT, e.g. 176x208 (native); default: the weights' native size."),
    pooling: Pooling = typer.Option("avg", "--pooling", help="Global pooling."),
    resize: Resize = typer.Option("stretch", "--resize", help="stretch, or pad: keep the aspect, pad with black."),
    layers: list[str] = typer.Option(["last"], "--layers", metavar="<last|mid|multi|LAYER,...>", help="Layer choice (pooled, concatenated); repeat the option to cache several choices in one pass."),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Images per inference batch."),
    engine: Engine = typer.Option("auto", "--engine", case_sensitive=False, help="auto: OpenVINO or ONNX Runtime on CPU when installed, else TF."),
    precision: Precision = PrecisionOpt,
    devices: Devices = DevicesOpt,
    classes: Optional[str] = typer.Option(None, "--classes", help="Class order A,B,C (default: severity order for the Kaggle stages, else alphabetical)."),
    subjects: str = SubjectsOpt,
    artifacts: Optional[str] = ArtifactsOpt,
    list_: bool = typer.Option(False, "--list", help="List the available backbones and exit."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar."),
    view: list[str] = ViewOpt,
    slices: int = SlicesOpt,
    series: Optional[str] = SeriesOpt,
    label_column: str = LabelColumnOpt,
    volume_index: Optional[int] = VolumeIndexOpt,
    cluster: Optional[str] = ClusterOpt,
) -> None:
    """Run a frozen pretrained backbone once over the images and cache the embeddings in HDF5."""
    if list_:
        from featurize.backbones import BACKBONES

        out.print(f"{'backbone':<16}{'input':>7}{'features':>10}  mid layers")
        for b in BACKBONES.values():
            out.print(f"{b.name:<16}{b.input_size:>7}{b.feature_dim:>10}  {', '.join(b.mid_layers)}", highlight=False)
        return
    if not data:
        _fail("featurize needs --data ROOT (or --list to see the backbones)")
    from featurize.latest import record_last
    from featurize.run import featurize_layers
    from featurize.summary import featurize_summary

    def go() -> Any:
        res = featurize_layers(data, backbone=backbone, weights=weights, image_size=image_size, pooling=pooling,
                               resize=resize, layer_choices=layers, batch_size=batch_size, classes=classes,
                               subjects=subjects, artifacts=artifacts, progress=not no_progress, log=_say,
                               engine=engine, precision=precision, devices=devices, cluster=cluster,
                               volumes=_volume_options(view, slices, series, label_column, volume_index))
        # for `classify` without --data: a cached rerun counts too, it is what the user ran last
        record_last(data=data, backbone=str(res[0].settings["backbone"]), dataset_id=res[0].dataset.dataset_id,
                    caches=[r.cache for r in res], artifacts=artifacts)
        return res

    results = _run(go)
    for res in results:
        out.print(featurize_summary(res, with_subjects=res is results[-1]), highlight=False)


@app.command(cls=_Command)
def classify(
    data: Optional[str] = typer.Option(None, "--data", help="Data root or CSV manifest (default: the data featurized last in --artifacts, and its backbone)."),
    backbone: Optional[str] = typer.Option(None, "--backbone", "-b", parser=_one_of(tuple(BACKBONES), extra=("all",)),
                                           metavar=_metavar(tuple(BACKBONES), extra=("all",)),
                                           help="Cached backbones to use (default: all; without --data, the one featurized last)."),
    head: str = typer.Option("all", "--head", parser=_one_of(HEADS, extra=("all",)), metavar=_metavar(HEADS, extra=("all",)), help="Heads to train."),
    layers: str = typer.Option("all", "--layers", metavar="<all|last|mid|multi|LAYER,...>", help="Which cached layer choice."),
    protocol: Protocol = ProtocolOpt,
    task: str = typer.Option("stages", "--label-map", "--task", help="stages | binary | OLD=NEW,...,*=NEW."),
    permutation: int = typer.Option(0, "--permutation", min=0, help="Refit N times with labels shuffled by subject: chance score and p-value."),
    by_subject: bool = typer.Option(False, "--by-subject", help="Decide per subject (mean slice probabilities) in the confusion plots."),
    level: Level = typer.Option("slice", "--level", help="slice: a row per slice; subject: a row per person, pooled from its slices."),
    pooling: SubjectPooling = typer.Option("meanstd", "--pooling", help="How --level subject pools a person's slices: mean | meanstd | quantiles (10/50/90)."),
    n_jobs: int = typer.Option(2, "--n-jobs", min=1, help="Parallel CV folds."),
    seed: int = typer.Option(0, "--seed", min=0),
    calibrate: Calibration = CalibrateOpt,
    conformal: Optional[float] = typer.Option(None, "--conformal", help="Per-subject prediction sets at this coverage level (e.g. 0.90), calibrated by subject."),
    inner_slices: int = InnerSlicesOpt,
    artifacts: Optional[str] = ArtifactsOpt,
    no_progress: bool = typer.Option(False, "--no-progress"),
    cluster: Optional[str] = ClusterOpt,
) -> None:
    """Train scikit-learn heads on cached features, evaluate honestly, and upsert report.csv."""
    from classify.report import format_report
    from classify.run import classify_dataset

    if not data:
        from featurize.latest import last_featurized, last_path

        last = _run(lambda: last_featurized(artifacts))
        data, backbone = last.data, backbone or last.backbone
        _say(f"classify: --data {data} --backbone {backbone} (featurized last, per {last_path(artifacts)})")
    backbone = backbone or "all"
    df = _run(lambda: classify_dataset(data, backbone=backbone, heads=head, protocol=protocol, artifacts=artifacts,
                                       permutation=permutation, n_jobs=n_jobs, seed=seed, by_subject=by_subject,
                                       progress=not no_progress, task=task, log=_say, layers=layers,
                                       calibration=calibrate, conformal=conformal, cluster=cluster, level=level,
                                       pooling=pooling, inner_slices=inner_slices))
    out.print(format_report(df, "table"), highlight=False)
    for p in df.attrs.get("bundles", [])[:1]:
        out.print(f"models: {Path(p).parent}   report: {report_path(artifacts)}", highlight=False)


@app.command(cls=_Command)
def weights(
    artifacts: Optional[str] = ArtifactsOpt,
) -> None:
    """List the weights catalog: each name's backbone, source, preprocessing, native input and provenance.

    Built-in: imagenet and none for every backbone. More come from TOML files named by $ALZMRI_WEIGHTS_CATALOG and
    from ARTIFACTS/weights.toml (the format: docs/weights.example.toml)."""
    from featurize.weights_catalog import list_entries

    rows = _run(lambda: list_entries(artifacts))
    out.print(f"{'name':<18}{'backbone':<16}{'input':<9}{'preprocess':<24}source / provenance", highlight=False)
    for r in rows:
        if r["name"] in ("imagenet", "none") and r["backbone"] != "mobilenetv2":
            continue  # one line each for the built-ins: they serve every backbone alike
        backbone = r["backbone"] if r["name"] not in ("imagenet", "none") else "(any)"
        out.print(f"{r['name']:<18}{backbone:<16}{r['input']:<9}{r['preprocess']:<24}{r['source']}: {r['provenance']}",
                  highlight=False, markup=False)


@app.command(cls=_Command)
def report(
    fmt: ReportFormat = typer.Option("table", "--format", help="table: compact, best first; csv and json: every column."),
    html: Optional[str] = typer.Option(None, "--html", help="Also write one self-contained HTML page (plots embedded) to FILE."),
    view: ReportView = typer.Option("rows", "--view", help="rows: every report row; transfer: per backbone and task, each weights source at slice and subject level, with 95% intervals."),
    artifacts: Optional[str] = ArtifactsOpt,
) -> None:
    """Print report.csv sorted by balanced accuracy, and redraw the plots."""
    from classify.run import report_command

    out.print(_run(lambda: report_command(artifacts, fmt=fmt, view=view)), highlight=False, markup=False)
    if html:
        from classify.html_report import write_html

        _say(f"html report: {_run(lambda: write_html(html, artifacts))}")


@app.command(cls=_Command)
def baseline(
    data: str = DataOpt,
    model: CnnModel = typer.Option("scratch", "--model", help="scratch: compact CNN, random init; finetune: a pretrained backbone."),
    backbone: Backbone = typer.Option("mobilenetv2", "--backbone", "-b", case_sensitive=False, help="Backbone for --model finetune."),
    weights: str = typer.Option("imagenet", "--weights", help="imagenet | none | a weights catalog NAME | PATH (finetune); its preprocessing comes from the catalog."),
    image_size: Optional[str] = typer.Option(None, "--image-size", help="WIDTHxHEIGHT (default: scratch 88x104; finetune the weights' native size, 224x224 for MobileNetV2; the slices' own is 176x208)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1, help="Maximum epochs, warm-up included (default: scratch 30, finetune 12)."),
    head_epochs: int = typer.Option(2, "--head-epochs", min=1, help="finetune: warm-up epochs of the new head on the frozen base."),
    patience: int = typer.Option(3, "--patience", min=1, help="Early-stopping patience on the balanced accuracy of a validation part of the training subjects."),
    unfreeze: int = UnfreezeOpt,
    batchnorm: BatchNormMode = BatchNormOpt,
    learning_rate: float = typer.Option(1e-3, "--learning-rate", min=0.0, help="Peak learning rate of the head (both stages) and of the scratch CNN; warm-up then cosine decay."),
    fine_learning_rate: float = typer.Option(1e-4, "--fine-learning-rate", min=0.0, help="finetune: peak learning rate of the unfrozen base layers (discriminative: below the head's)."),
    label_smoothing: float = typer.Option(0.1, "--label-smoothing", min=0.0, help="Label smoothing of the cross-entropy (class weights handle the imbalance)."),
    max_train_minutes: Optional[float] = typer.Option(None, "--max-train-minutes", min=0.0, help="Stop each network after the epoch that would overrun N minutes; rerun to continue from the checkpoint."),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    precision: Precision = PrecisionOpt,
    devices: Devices = DevicesOpt,
    protocol: Protocol = ProtocolOpt,
    subjects: str = SubjectsOpt,
    classes: Optional[str] = typer.Option(None, "--classes"),
    seed: int = typer.Option(0, "--seed", min=0),
    artifacts: Optional[str] = ArtifactsOpt,
    no_progress: bool = typer.Option(False, "--no-progress"),
    view: list[str] = ViewOpt,
    slices: int = SlicesOpt,
    series: Optional[str] = SeriesOpt,
    label_column: str = LabelColumnOpt,
    volume_index: Optional[int] = VolumeIndexOpt,
) -> None:
    """Train an end-to-end CNN (from scratch, or fine-tuned) on the same split and metrics as the heads."""
    from classify.cnn import BaselineConfig, train_baseline

    def go() -> Any:
        cfg = BaselineConfig(model=model, backbone=backbone, weights=weights, image_size=image_size, epochs=epochs,
                             head_epochs=head_epochs, patience=patience, unfreeze=unfreeze, batchnorm=batchnorm,
                             learning_rate=learning_rate,
                             fine_learning_rate=fine_learning_rate, label_smoothing=label_smoothing,
                             max_train_minutes=max_train_minutes, batch_size=batch_size, protocol=protocol,
                             subjects=subjects, classes=classes, seed=seed, precision=precision, devices=devices,
                             volumes=_volume_options(view, slices, series, label_column, volume_index))
        return train_baseline(data, cfg, artifacts=artifacts, progress=not no_progress, log=_say)

    res = _run(go)
    out.print(res.summary(), highlight=False, markup=False)


@app.command(cls=_Command)
def curve(
    data: str = DataOpt,
    sizes: str = typer.Option("10,20,40,80,all", "--sizes", help="Training subjects per fold (nested sets), 'all' for every one."),
    methods: str = typer.Option("frozen,finetune,scratch", "--methods", parser=_one_of(CURVE_METHODS), metavar=_metavar(CURVE_METHODS), help="frozen: cached features + --head; finetune; scratch."),
    head: str = typer.Option("logreg", "--head", parser=_one_of(HEADS), metavar=_metavar(HEADS), help="The frozen-feature head (grid-searched on the training subjects)."),
    backbone: Backbone = typer.Option("mobilenetv2", "--backbone", "-b", case_sensitive=False),
    weights: str = typer.Option("imagenet", "--weights", help="imagenet | none | a weights catalog NAME | PATH (frozen features and finetune)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1, help="CNN epoch budget (default per model, as baseline)."),
    max_train_minutes: Optional[float] = typer.Option(None, "--max-train-minutes", min=0.0, help="Per network: stop after the epoch that would overrun N minutes; rerun to continue."),
    image_size: Optional[str] = typer.Option(None, "--image-size", help="WIDTHxHEIGHT for both CNNs (default per model, as baseline)."),
    unfreeze: int = UnfreezeOpt,
    batchnorm: BatchNormMode = BatchNormOpt,
    folds: int = typer.Option(5, "--folds", min=2, help="subject-cv folds (the same test folds for every method and size)."),
    seed: int = typer.Option(0, "--seed", min=0),
    artifacts: Optional[str] = ArtifactsOpt,
    no_progress: bool = typer.Option(False, "--no-progress"),
) -> None:
    """Frozen features vs fine-tuning vs scratch as training subjects grow: balanced accuracy with 95% intervals (CSV, PNG, report rows)."""
    from classify.curve import CurveConfig, format_curve, parse_sizes, run_curve

    def go() -> Any:
        cfg = CurveConfig(sizes=parse_sizes(sizes), methods=tuple(methods.split(",")), head=head, backbone=backbone,
                          weights=weights, epochs=epochs, max_train_minutes=max_train_minutes, image_size=image_size,
                          unfreeze=unfreeze, batchnorm=batchnorm, folds=folds, seed=seed)
        return run_curve(data, cfg, artifacts=artifacts, progress=not no_progress, log=_say)

    out.print(format_curve(_run(go)), highlight=False, markup=False)


@app.command(cls=_Command)
def sweep(
    data: str = DataOpt,
    backbones: str = typer.Option("mobilenetv2", "--backbones", parser=_one_of(tuple(BACKBONES)), metavar=_metavar(tuple(BACKBONES)), help="Backbones to sweep."),
    layers: str = typer.Option("last,mid,multi", "--layers", help="Semicolon or comma list of layer choices: last, mid, multi (or LAYER+LAYER)."),
    heads: str = typer.Option("all", "--heads", parser=_one_of(HEADS, extra=("all",)), metavar=_metavar(HEADS, extra=("all",)), help="Heads to sweep."),
    tasks: str = typer.Option("stages,binary", "--task", help="Comma list of tasks: stages, binary (label maps with ';' between tasks)."),
    weights: str = typer.Option("imagenet", "--weights", help="imagenet | none | PATH, or per backbone: mobilenetv2=imagenet,*=none."),
    image_size: Optional[str] = typer.Option(None, "--image-size", help="WIDTHxHEIGHT for every backbone."),
    criterion: Optional[Criterion] = typer.Option(None, "--criterion", help="What picks the winner (default: balanced_accuracy; subject_balanced_accuracy with --level subject)."),
    level: str = typer.Option("slice", "--level", parser=_one_of(LEVELS), metavar=_metavar(LEVELS), help="Levels to sweep: slice, subject or both."),
    pooling: str = typer.Option("meanstd", "--pooling", parser=_one_of(SUBJECT_POOLINGS), metavar=_metavar(SUBJECT_POOLINGS), help="Subject poolings to sweep (at --level subject)."),
    fuse: Optional[str] = typer.Option(None, "--fuse", help="Fused candidates: BACKBONE[:LAYERS]+BACKBONE[:LAYERS], several joined by ';'."),
    calibrate: Calibration = CalibrateOpt,
    inner_slices: int = InnerSlicesOpt,
    n_jobs: int = typer.Option(2, "--n-jobs", min=1),
    seed: int = typer.Option(0, "--seed", min=0),
    artifacts: Optional[str] = ArtifactsOpt,
    no_progress: bool = typer.Option(False, "--no-progress"),
    cluster: Optional[str] = ClusterOpt,
) -> None:
    """Evaluate backbones x layers x heads x tasks under subject-cv; report the top 10, a nested estimate, and save the winner."""
    from classify.sweep import format_sweep, run_sweep, sweep_lists

    backbone_list, layer_list, head_list, task_list = sweep_lists(backbones=backbones, layers=layers, heads=heads, tasks=tasks)
    results = _run(lambda: run_sweep(data, backbones=backbone_list, layers=layer_list, heads=head_list, tasks=task_list,
                                     weights=weights, image_size=image_size, criterion=criterion, artifacts=artifacts,
                                     n_jobs=n_jobs, seed=seed, progress=not no_progress, log=_say, calibration=calibrate,
                                     cluster=cluster, levels=level.split(","), poolings=pooling.split(","), fuse=fuse,
                                     inner_slices=inner_slices))
    for res in results:
        out.print(format_sweep(res), highlight=False, markup=False)


@app.command(cls=_Command)
def subjects(
    data: str = DataOpt,
    mode: str = typer.Option("infer", "--subjects", help="infer (cluster near-duplicate slices) | column | regex:PATTERN."),
    classes: Optional[str] = typer.Option(None, "--classes", help="Class order A,B,C."),
    artifacts: Optional[str] = ArtifactsOpt,
) -> None:
    """Find which slices belong to one subject, check for train/test leakage, write subjects.csv."""
    from featurize.grouping import subjects_for_data
    from featurize.subjects import format_report

    ds, report, inference, path = _run(lambda: subjects_for_data(data, mode=mode, classes=classes, artifacts=artifacts, log=_say))
    out.print(format_report(report, inference), highlight=False)
    out.print(f"written: {path}", highlight=False)


@app.command(cls=_Command)
def synth(
    out_dir: str = typer.Option(..., "--out", help="Folder to write the Kaggle layout into."),
    subjects_per_class: int = typer.Option(6, "--subjects-per-class", min=1, help="Synthetic subjects per stage."),
    slices_per_subject: int = typer.Option(8, "--slices-per-subject", min=1, help="Adjacent axial slices per subject."),
    size: Optional[str] = typer.Option(None, "--size", help="WIDTHxHEIGHT (default 176x208; with --volumes the in-plane voxels, default 64x76)."),
    fmt: Optional[SynthFormat] = typer.Option(None, "--format", help="png|jpg slices (default png); with --volumes nifti|analyze|dicom scans (default nifti)."),
    split: Split = typer.Option("slice", "--split", help="slice: leaky, like Kaggle; subject: whole subjects in test."),
    seed: int = typer.Option(0, "--seed", min=0),
    volumes: bool = typer.Option(False, "--volumes", help="Write 3-D scans, one per subject, in class folders (ROOT/<Class>/sub-<id>.nii.gz, .hdr/.img, or a DICOM folder)."),
) -> None:
    """Generate deterministic brain-MRI-like slices (or 3-D scans) of four dementia stages (no download needed)."""
    from featurize.images import parse_size
    from featurize.synth import write_dataset

    def go() -> Any:
        try:
            wh = parse_size(size) if size else None
        except ValueError as exc:
            raise AlzmriError(str(exc)) from None
        if volumes:
            from featurize.synth_volumes import VolumeSpec, write_volume_dataset

            volume_format = choose("--format with --volumes", fmt or "nifti", VOLUME_FORMATS)
            spec = VolumeSpec(size=wh) if wh else VolumeSpec()
            return write_volume_dataset(out_dir, fmt=volume_format, subjects_per_class=subjects_per_class, spec=spec,
                                        seed=seed)
        return write_dataset(out_dir, subjects_per_class=subjects_per_class, slices_per_subject=slices_per_subject,
                             size=wh or (176, 208), fmt=choose("--format", fmt or "png", IMAGE_FORMATS), split=split,
                             seed=seed)

    truth = _run(go)
    if volumes:
        out.print(f"wrote {len(truth)} scans of {truth['subject'].nunique()} subjects to {out_dir}")
        out.print(truth.groupby("label").size().to_string(), highlight=False)
        return
    from featurize.synth import CLASS_NAMES

    counts = truth.groupby(["label", "split"]).size().unstack(1).fillna(0).astype(int).reindex(CLASS_NAMES)
    out.print(f"wrote {len(truth)} slices of {truth['subject'].nunique()} subjects to {out_dir} (ground truth: {out_dir}/subjects_truth.csv)")
    out.print(counts.to_string(), highlight=False)


@app.command(cls=_Command)
def demo(
    artifacts: Optional[str] = ArtifactsOpt,
    backbone: Backbone = typer.Option("mobilenetv2", "--backbone", "-b", case_sensitive=False),
    weights: str = typer.Option("imagenet", "--weights", help="imagenet (falls back to none, labelled, when offline) | none | PATH."),
    subjects_per_class: int = typer.Option(8, "--subjects-per-class", min=2),
    epochs: int = typer.Option(4, "--epochs", min=1, help="Epochs of the scratch CNN."),
    no_progress: bool = typer.Option(False, "--no-progress"),
    volumes: bool = typer.Option(False, "--volumes", help="On synthetic 3-D scans (NIfTI, one per subject, 8 axial slices each) instead of slices."),
) -> None:
    """Run the whole pipeline on built-in synthetic MRI data and print the report."""
    from classify.demo import run_demo

    res = _run(lambda: run_demo(artifacts, backbone=backbone, weights=weights, subjects_per_class=subjects_per_class,
                                baseline_epochs=epochs, progress=not no_progress, log=_say, volumes=volumes))
    out.print(res.table, highlight=False)
    out.print(f"report: {res.report}   (alzmri report --artifacts ... to see it again; plots beside it)", highlight=False)


@app.command(cls=_Command)
def predict(
    inputs: list[str] = typer.Argument(..., help="Image files and/or folders of images; or volume files (.nii, .nii.gz, .hdr/.img, .mgz) and DICOM folders: one row per scan."),
    model: str = typer.Option(..., "--model", "-m", help="A .joblib bundle from `classify` a .keras model from `baseline`, or a .onnx file from `export`."),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    weights: Optional[str] = typer.Option(None, "--weights", help="The weights file, when the model was trained on features from --weights PATH."),
    by_subject: Optional[str] = typer.Option(None, "--by-subject", help="folder (one folder per person) | infer | regex:PATTERN: also decide per person (required by a subject-level model)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    as_csv: bool = typer.Option(False, "--csv", help="Print CSV."),
    artifacts: Optional[str] = typer.Option(None, "--artifacts", help="Where featurize left its model cards and exports (engines/): a bundle runs from them without TF when they match [default: $ALZMRI_ARTIFACTS, else ./artifacts]."),
    explain: Optional[str] = typer.Option(None, "--explain", help="Write a heatmap PNG per slice and a montage per subject into DIR."),
    explain_method: ExplainMethod = typer.Option("auto", "--explain-method", help="cam: exact, linear heads; occlusion: any head; auto: cam when possible."),
    view: Optional[list[str]] = typer.Option(None, "--view", parser=_one_of(get_args(View)), metavar=_metavar(get_args(View)),
                                             help="3-D scans: slice orientation, repeatable (default: the model's training cache's, else axial)."),
    slices: Optional[int] = typer.Option(None, "--slices", min=1, help="3-D scans: slices per view (default: the model's, else 32)."),
    series: Optional[str] = SeriesOpt,
    volume_index: Optional[int] = VolumeIndexOpt,
) -> None:
    """Predict the stage of new slices, or of whole scans, with a saved model (never needs the training data)."""
    from classify.predict import format_predictions, predict_paths

    fmt = "json" if as_json else "csv" if as_csv else "table"
    volume = {"views": tuple(v for item in view or [] for v in item.split(",") if v) or None, "n_slices": slices,
              "series": series, "volume_index": volume_index}
    table, subjects = _run(lambda: predict_paths(model, inputs, batch_size=batch_size, weights=weights, by_subject=by_subject,
                                                 progress=fmt == "table", artifacts=artifacts, log=_say, explain=explain,
                                                 explain_method=explain_method, **volume))
    out.print(format_predictions(table, fmt), highlight=False, markup=False)
    if subjects is not None:
        out.print(format_predictions(subjects, fmt), highlight=False, markup=False)
    n_bad = int(table["error"].astype(bool).sum())
    if n_bad:
        _say(f"{n_bad} file(s) could not be read (see the error column)")


@app.command(cls=_Command)
def export(
    model: str = typer.Option(..., "--model", "-m", help="A signed .joblib bundle from `classify` or a .keras model from `baseline`."),
    out_path: str = typer.Option(..., "--out", help="The .onnx file to write (a Markdown model card goes beside it)."),
    weights: Optional[str] = typer.Option(None, "--weights", help="The weights file, when the model was trained on features from --weights PATH."),
    artifacts: Optional[str] = typer.Option(None, "--artifacts", help="Where featurize left its model cards and exports (engines/): the backbone is taken from them without TF when they match [default: $ALZMRI_ARTIFACTS, else ./artifacts]."),
) -> None:
    """Export a model as one ONNX file, pixels to probabilities, safe to share (runs in ONNX Runtime alone)."""
    from classify.export import export_model

    res = _run(lambda: export_model(model, out_path, weights=weights, artifacts=artifacts, log=_say))
    out.print(res.summary(), highlight=False, markup=False)


def _single(command: Callable[..., None]) -> typer.Typer:
    """A typer app holding one of the umbrella's commands, the very same function: same options, same help."""
    one = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    one.command(cls=_Command)(command)
    return one


featurize_app = _single(featurize)
classify_app = _single(classify)


def main() -> None:
    """Console-script entry point of `alzmri`."""
    app()


def featurize_main() -> None:
    """Console-script entry point of `featurize` (the same command as `alzmri featurize`)."""
    featurize_app(prog_name="featurize")


def classify_main() -> None:
    """Console-script entry point of `classify` (the same command as `alzmri classify`)."""
    classify_app(prog_name="classify")


if __name__ == "__main__":
    sys.exit(main())
