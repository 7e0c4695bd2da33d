"""alzmri command line: a thin typer layer over the featurize and classify libraries."""

from __future__ import annotations

import os
import sys
from typing import Any, Callable, Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ start-up chatter off the terminal

import typer
from rich.console import Console

from featurize.errors import AlzmriError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Stage Alzheimer's disease from brain MRI slices with frozen CNN features, scikit-learn heads, and honest subject-aware evaluation.")
out = Console(soft_wrap=True)
err = Console(stderr=True)

ArtifactsOpt = typer.Option(None, "--artifacts", help="Output folder for everything (default: $ALZMRI_ARTIFACTS or ./artifacts).")
DataOpt = typer.Option(..., "--data", help="Data root (ROOT/{train,test}/<Class>/*, or ROOT/<Class>/*) or a CSV manifest path,label[,split,subject].")
SubjectsOpt = typer.Option("auto", "--subjects", help="auto (manifest column, else inferred) | infer | column | regex:PATTERN | none.")


def _quiet_tf() -> None:
    from featurize.tfquiet import import_tensorflow

    import_tensorflow()


def _say(msg: str) -> None:
    err.print(msg, highlight=False)


def _fail(message: str, code: int = 2) -> None:
    """Print one error line and exit non-zero."""
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _run(fn: Callable[[], Any]) -> Any:
    """Run a library call; a user error becomes one line on stderr and a non-zero exit."""
    try:
        return fn()
    except AlzmriError as exc:
        _fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        err.print("[bold red]interrupted[/]; rerun the same command to resume", highlight=False)
        raise typer.Exit(130) from None


@app.callback()
def _root() -> None:
    """Stage Alzheimer's disease from brain MRI slices."""


@app.command()
def featurize(
    data: Optional[str] = typer.Option(None, "--data", help="Data root or CSV manifest."),
    backbone: str = typer.Option("mobilenetv2", "--backbone", "-b", help="Backbone name (see --list)."),
    weights: str = typer.Option("imagenet", "--weights", help="imagenet | none (random init) | PATH to a Keras weights file."),
    image_size: Optional[str] = typer.Option(None, "--image-size", help="WIDTHxHEIGHT, e.g. 176x208 (native); default: the backbone's."),
    pooling: str = typer.Option("avg", "--pooling", help="avg | max global pooling."),
    resize: str = typer.Option("stretch", "--resize", help="stretch | pad (keep aspect, pad with black)."),
    layers: str = typer.Option("last", "--layers", help="last | mid | multi | LAYER,... pooled activations to cache."),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Images per inference batch."),
    classes: Optional[str] = typer.Option(None, "--classes", help="Class order A,B,C (default: severity order for the Kaggle stages, else alphabetical)."),
    subjects: str = SubjectsOpt,
    artifacts: Optional[str] = ArtifactsOpt,
    list_: bool = typer.Option(False, "--list", help="List the available backbones and exit."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar."),
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
    _quiet_tf()
    from featurize.run import featurize_dataset
    from featurize.summary import featurize_summary

    res = _run(lambda: featurize_dataset(data, backbone=backbone, weights=weights, image_size=image_size, pooling=pooling,
                                         resize=resize, layers=layers, batch_size=batch_size, classes=classes,
                                         subjects=subjects, artifacts=artifacts, progress=not no_progress, log=_say))
    out.print(featurize_summary(res), highlight=False)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    sys.exit(main())
