"""Fitted model bundles: a joblib file plus an HMAC-SHA256 signature sidecar.

Naming: ``artifacts/models/<dataset-id>/<backbone>__<head>[__<weights>][__<layers>][__<features>][__<task>][__<protocol>][__<level>].joblib``
where a part is added only when it differs from the default (weights ``imagenet``, layers ``last``, features
"" (the backbone's input size, avg pooling, stretch, float32), task ``stages``, protocol ``official``, level
``slice``), so the common case stays ``mobilenetv2__logreg.joblib`` and runs with other settings never overwrite
each other.

A subject-level bundle (``level`` ``subject-<pooling>``) holds its ``pooling``: ``predict`` pools a new person's slice
features the same way. A fused bundle (``classify.fusion``) lists the backbone spec of every part in ``parts``, in
column order.

Why a signature: unpickling (joblib) executes code chosen by whoever wrote the file. ``load_bundle`` only
unpickles bytes whose HMAC matches the current user's secret key (``$ALZMRI_KEY_FILE``, default
``~/.config/alzmri/signing.key``, created 0600 on first save), i.e. files this user's alzmri wrote.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import io
import json
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import joblib
import numpy as np

from featurize.atomic import write_bytes_durably
from featurize.config import models_dir
from featurize.errors import AlzmriError
from featurize.naming import slug
from featurize.store import SETTING_KEYS

if TYPE_CHECKING:
    from classify.evaluate import EvalResult
    from featurize.featureset import FeatureSet

KEY_ENV = "ALZMRI_KEY_FILE"
BUNDLE_FORMAT = 1
# What predict needs to recompute the features: the cache's identity, plus the seed of a random init (a cache's name
# leaves it out) and what its weights checksum covers.
BACKBONE_KEYS = (*SETTING_KEYS, "seed", "weights_sha256_scope")
VOLUME_KEYS = ("input", "volume_views", "volume_slices", "volume_index")  # featurize.volume_featurize.VOLUME_KEYS
DEFAULTS = {"weights": "imagenet", "layers": "last", "features": "", "task": "stages", "protocol": "official",
            "level": "slice", "calibration": "none"}


@dataclass
class ModelBundle:
    """A fitted head and everything needed to use it on new images.

    ``backbone`` holds the feature extractor spec (name as ``backbone``, weights tag, weights_sha256, image_size,
    pooling, resize, layers, precision: None for float32): new images must be featurized with exactly these settings.
    ``pipeline.predict_proba`` columns follow ``pipeline.classes_`` (indices into ``class_names``).
    """

    pipeline: Any
    class_names: list[str]
    backbone: dict[str, Any]
    fingerprint: str
    head: str
    protocol: str
    selection: str = "balanced_accuracy"
    task: str = "stages"
    best_params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    dataset_id: str = ""
    tool_version: str = ""
    sklearn_version: str = ""
    created: str = ""
    format: int = BUNDLE_FORMAT
    # Fields added later keep class-level defaults, so bundles pickled before them still load as slice heads.
    level: str = "slice"
    pooling: Any = None
    parts: tuple[dict[str, Any], ...] = ()
    calibration: str = "none"  # the pipeline is a CalibratedClassifierCV when not "none"
    conformal: Any = None  # classify.conformal.ConformalPredictor: per-subject prediction sets in predict

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Scores (n, len(class_names)) in class order; classes the model never saw score 0."""
        proba = self.pipeline.predict_proba(X)
        out = np.zeros((len(X), len(self.class_names)))
        out[:, np.asarray(self.pipeline.classes_, dtype=int)] = proba
        return out

    def predict(self, X: np.ndarray) -> list[str]:
        """Predicted class names."""
        return [self.class_names[int(i)] for i in self.pipeline.predict(X)]


def tool_version() -> str:
    """The installed alzmri version ("0+unknown" when not installed)."""
    try:
        from importlib.metadata import version

        return version("alzmri")
    except Exception:  # noqa: BLE001 - not installed as a distribution (e.g. run from a checkout)
        return "0+unknown"


def bundle_name(backbone: str, head: str, *, weights: str = "imagenet", layers: str = "last", task: str = "stages",
                protocol: str = "official", features: str = "", level: str = "slice", calibration: str = "none") -> str:
    """File name of a bundle (see the module docstring for the rule)."""
    parts = [slug(backbone), slug(head)]
    for key, value in (("weights", weights), ("layers", layers), ("features", features), ("task", task),
                       ("protocol", protocol), ("level", level), ("calibration", calibration)):
        if value and value != DEFAULTS[key]:
            v = str(value)
            # Custom label maps can be long and full of symbols: name them by a short hash.
            parts.append(f"custom-{hashlib.sha1(v.encode()).hexdigest()[:8]}" if v.startswith("custom:") else slug(v))
    return "__".join(parts) + ".joblib"


def bundle_path(dataset_id: str, backbone: str, head: str, *, artifacts: str | os.PathLike[str] | None = None,
                weights: str = "imagenet", layers: str = "last", task: str = "stages", protocol: str = "official",
                features: str = "", level: str = "slice", calibration: str = "none") -> Path:
    """Where the bundle of (dataset, backbone, head, ...) lives."""
    return models_dir(dataset_id, artifacts) / bundle_name(backbone, head, weights=weights, layers=layers, task=task,
                                                             protocol=protocol, features=features, level=level,
                                                             calibration=calibration)


def bundle_for(fs: FeatureSet, res: EvalResult, *, task: str, selection: str,
               artifacts: str | os.PathLike[str] | None = None) -> tuple[Path, ModelBundle]:
    """The bundle of head ``res`` evaluated on cache ``fs`` (``fs.meta["dataset_id"]`` set), and where it goes."""
    from featurize.store import variant_tag

    m = fs.meta
    ds_id = str(m.get("dataset_id", ""))
    path = bundle_path(ds_id, str(m.get("backbone")), res.head, artifacts=artifacts, weights=str(m.get("weights")),
                       layers=str(m.get("layers")), task=task, protocol=res.protocol,
                       features=m["fused_features"] if "fused_parts" in m else variant_tag(m),
                       level=res.level, calibration=getattr(res, "calibration", "none"))
    bundle = ModelBundle(
        pipeline=res.model, class_names=list(fs.class_names),
        # a volume cache's slicing too, so that predict cuts new scans the same way (2-D bundles are unchanged)
        backbone={**{k: m.get(k) for k in BACKBONE_KEYS}, **{k: m[k] for k in VOLUME_KEYS if k in m}},
        fingerprint=str(m.get("fingerprint", "")), head=res.head, protocol=res.protocol, selection=selection,
        task=task, best_params=res.best_params,
        metrics={k: v for k, v in res.metrics.items() if isinstance(v, float) and np.isfinite(v)}, dataset_id=ds_id,
        level=res.level, pooling=res.pooling,
        parts=tuple({k: p.get(k) for k in BACKBONE_KEYS} for p in m.get("fused_parts", [])),
        calibration=getattr(res, "calibration", "none"), conformal=getattr(res, "conformal", None))
    return path, bundle


def list_bundles(dataset_id: str, artifacts: str | os.PathLike[str] | None = None) -> list[Path]:
    """Every signed bundle of a dataset, sorted by name."""
    folder = models_dir(dataset_id, artifacts)
    return sorted(p for p in folder.glob("*.joblib") if sig_path(p).is_file()) if folder.is_dir() else []


def staged_path(path: str | os.PathLike[str]) -> Path:
    """Where a bundle waits for its report row before ``commit_bundle``: a hidden, per-process name beside
    ``path`` that is never listed or loaded. So a crash before the row is written leaves no bundle without one."""
    path = Path(path)
    return path.with_name(f".{path.name}.staged-{os.getpid()}")


def commit_bundle(staged: Path, path: str | os.PathLike[str]) -> Path:
    """Move a staged bundle and its signature into place. The signature goes first: a crash between the two
    renames pairs the old model with the new signature, which is refused, never trusted."""
    path = Path(path)
    os.replace(sig_path(staged), sig_path(path))
    os.replace(staged, path)
    return path


def discard_staged(staged: Path) -> None:
    """Delete a staged bundle and its signature (its report row was never written)."""
    for p in (staged, sig_path(staged)):
        with contextlib.suppress(OSError):
            p.unlink()


def remove_dead_staged(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the staged bundles of processes that are gone (killed before their report row); returns them."""
    gone = []
    for p in Path(folder).glob(".*.joblib.staged-*") if Path(folder).is_dir() else []:
        pid = p.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or int(pid) == os.getpid() or _alive(int(pid)):
            continue
        discard_staged(p)
        gone.append(p)
    return gone


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sig_path(path: str | os.PathLike[str]) -> Path:
    """The signature sidecar of a bundle."""
    return Path(f"{path}.sig")


def key_file() -> Path:
    """The signing key path: ``$ALZMRI_KEY_FILE`` or ``~/.config/alzmri/signing.key``."""
    env = os.environ.get(KEY_ENV)
    return Path(env).expanduser() if env else Path.home() / ".config" / "alzmri" / "signing.key"


def signing_key(create: bool = False) -> bytes:
    """The per-user secret key; created (32 random bytes, hex, mode 0600) when ``create`` and absent."""
    path = key_file()
    if not path.is_file():
        if not create:
            raise AlzmriError(f"{path}: no signing key, so no model bundle can be trusted; bundles are only loaded "
                              f"when signed by this user's key (set ${KEY_ENV} to the key used when saving)")
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with contextlib.suppress(FileExistsError):  # another process may create it at the same moment
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(32) + "\n")
    key = path.read_text().strip().encode()
    if len(key) < 32:
        raise AlzmriError(f"{path}: signing key is too short; delete it to have a new one made (existing bundles "
                          "must then be re-created)")
    return key


def save_bundle(path: str | os.PathLike[str], bundle: ModelBundle, *, name: str | None = None) -> Path:
    """Write ``bundle`` (joblib) and its signature sidecar, each atomically: model first, signature last, so a
    crash in between leaves a model whose old signature no longer matches (refused, never trusted). ``name`` is
    the file name the signature records, when ``path`` is a staged copy (see ``staged_path``)."""
    import sklearn

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    bundle.tool_version = bundle.tool_version or tool_version()
    bundle.sklearn_version = bundle.sklearn_version or sklearn.__version__
    bundle.created = bundle.created or time.strftime("%Y-%m-%dT%H:%M:%S%z")
    buf = io.BytesIO()
    joblib.dump(bundle, buf, compress=3)
    data = buf.getvalue()
    key = signing_key(create=True)
    sig = {"hmac": hmac.new(key, data, hashlib.sha256).hexdigest(), "sha256": hashlib.sha256(data).hexdigest(),
           "created": bundle.created, "algorithm": "HMAC-SHA256", "file": name or path.name}
    write_bytes_durably(path, data)
    write_bytes_durably(sig_path(path), (json.dumps(sig, indent=1) + "\n").encode())
    return path


def sign_files(path: str | os.PathLike[str], *also: str | os.PathLike[str]) -> Path:
    """Sign a model file that is not a bundle (a ``.keras`` baseline) together with its sidecars, in ``<path>.sig``
    (written last and atomically: a crash before it leaves the old signature, which no longer matches)."""
    path = Path(path)
    data = b"".join(_framed(p) for p in (path, *also))
    sig = {"hmac": hmac.new(signing_key(create=True), data, hashlib.sha256).hexdigest(), "algorithm": "HMAC-SHA256",
           "file": path.name, "also": [Path(p).name for p in also], "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_bytes_durably(sig_path(path), (json.dumps(sig, indent=1) + "\n").encode())
    return sig_path(path)


def verified_bytes(path: str | os.PathLike[str], *also: str | os.PathLike[str], retrain: str) -> list[bytes]:
    """The bytes of ``path`` and its sidecars, once their signature (``sign_files``) verifies; AlzmriError (one
    line, ``retrain`` says how to re-create them) for a missing, malformed or mismatching signature."""
    path = Path(path)
    risk = f"loading an unsigned model file could run arbitrary code, so alzmri refuses it; {retrain}"
    sp = sig_path(path)
    if not sp.is_file():
        raise AlzmriError(f"{path}: no signature file {sp.name}; {risk}")
    try:
        expected = str(json.loads(sp.read_text())["hmac"])
    except (OSError, ValueError, KeyError, TypeError):
        raise AlzmriError(f"{sp}: malformed signature; {risk}") from None
    try:
        blobs = [Path(p).read_bytes() for p in (path, *also)]
    except OSError as exc:
        raise AlzmriError(f"{exc.filename}: cannot read it ({exc.strerror}); {retrain}") from None
    data = b"".join(len(b).to_bytes(8, "big") + b for b in blobs)
    if not hmac.compare_digest(hmac.new(signing_key(create=False), data, hashlib.sha256).hexdigest(), expected):
        raise AlzmriError(f"{path}: signature does not match (file or sidecar changed, or signed with another user's "
                          f"key than {key_file()}); {risk}")
    return blobs


def _framed(path: str | os.PathLike[str]) -> bytes:
    data = Path(path).read_bytes()
    return len(data).to_bytes(8, "big") + data  # length-prefixed: bytes cannot move between the files


def load_bundle(path: str | os.PathLike[str]) -> ModelBundle:
    """Verify the signature of ``path`` against this user's key, then unpickle it.

    Refuses (AlzmriError) a missing file, a missing or malformed signature, or one made with another key or
    for other bytes: unpickling runs arbitrary code, so unverified files are never opened.
    """
    path = Path(path)
    if not path.is_file():
        raise AlzmriError(f"{path}: no such model bundle; run `alzmri classify --data ROOT` to train one")
    risk = "loading an unsigned model file could run arbitrary code, so alzmri refuses it; re-create it with `alzmri classify`"
    sp = sig_path(path)
    if not sp.is_file():
        raise AlzmriError(f"{path}: no signature file {sp.name}; {risk}")
    try:
        sig = json.loads(sp.read_text())
        expected = str(sig["hmac"])
    except (OSError, ValueError, KeyError, TypeError):
        raise AlzmriError(f"{sp}: malformed signature; {risk}") from None
    data = path.read_bytes()  # verify and unpickle the very same bytes (no re-read in between)
    actual = hmac.new(signing_key(create=False), data, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(actual, expected):
        raise AlzmriError(f"{path}: signature does not match (file changed, or signed with another user's key "
                          f"than {key_file()}); {risk}")
    bundle = joblib.load(io.BytesIO(data))
    if not isinstance(bundle, ModelBundle):
        raise AlzmriError(f"{path}: not an alzmri model bundle; re-create it with `alzmri classify`")
    return bundle
