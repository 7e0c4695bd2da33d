"""``predict --explain DIR``: where on the slice the head finds its evidence.

Two methods, one PNG per input slice (the slice in grey, red = evidence for the predicted stage, blue = against) and
one montage per subject:

  * ``cam`` (exact class activation map) for linear heads (logreg) on globally average-pooled features. The scaler,
    the PCA and the linear weights fold into one linear map on the pooled channels, ``logit_k = A_k . f + b_k``.
    Average pooling is linear, so applying ``A_k`` to the spatial activations *before* pooling gives a map whose
    spatial mean plus ``b_k`` is exactly the logit (per tapped layer for multi-layer features; the layers' maps are
    upsampled to the slice and added). One TensorFlow forward pass with spatial outputs yields both the features
    (hence the prediction) and the maps. The map shown for stage k is ``A_k - mean_j A_j`` (the softmax only sees
    differences; two classes: the binary logit, signed). A calibrated bundle is explained through the mean of its
    members' linear maps: the decision before the (monotone) calibration.
  * ``occlusion`` for any head (RBF SVM, MLP, max pooling): a grey patch (the slice's mean intensity) of
    ``OCCLUSION_PATCH`` x the input side slides with stride ``OCCLUSION_STRIDE`` x the side (defaults 1/4 and 1/8: 7 x 7
    = 49 occluded copies per slice); the drop in the predicted stage's probability is spread over the patch's pixels
    and averaged where patches overlap. The copies are batched through the same feature engine as ``predict``.

``auto`` uses ``cam`` when the bundle allows it, else ``occlusion``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from featurize.errors import AlzmriError
from featurize.options import choose

METHODS = ("auto", "cam", "occlusion")
OCCLUSION_PATCH = 0.25
OCCLUSION_STRIDE = 0.125
MONTAGE_COLUMNS = 8
Log = Callable[[str], None]


# ------------------------------------------------------------------ the linear map of a head

def _linear_of_pipeline(pipe: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """(A, b) with ``decision_function(f) == f @ A.T + b`` for scale -> [pca] -> LogisticRegression, else None."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    if not isinstance(pipe, Pipeline) or not isinstance(pipe.steps[-1][1], LogisticRegression):
        return None
    clf = pipe.steps[-1][1]
    A, b = np.asarray(clf.coef_, dtype=np.float64), np.asarray(clf.intercept_, dtype=np.float64)
    for _, step in reversed(pipe.steps[:-1]):
        if isinstance(step, PCA):  # z = (x - mean) @ components.T  (whiten is off in heads.make_head)
            if getattr(step, "whiten", False):
                return None
            b = b - A @ (step.components_ @ step.mean_)
            A = A @ step.components_
        elif isinstance(step, StandardScaler):  # x = (f - mean) / scale
            scale = np.where(step.scale_ == 0, 1.0, step.scale_) if step.scale_ is not None else 1.0
            mean = step.mean_ if step.mean_ is not None else 0.0
            A = A / scale
            b = b - A @ np.broadcast_to(mean, A.shape[1:])
        else:
            return None
    return A, b


def linear_map(model: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """The head's logits as ``f @ A.T + b`` over the pooled features ``f`` (None when the head is not linear).

    A calibrated head (CalibratedClassifierCV) gives the mean of its members' maps."""
    from sklearn.calibration import CalibratedClassifierCV

    if isinstance(model, CalibratedClassifierCV):
        parts = [_linear_of_pipeline(c.estimator) for c in model.calibrated_classifiers_]
        if not parts or any(p is None for p in parts):
            return None
        return np.mean([p[0] for p in parts], axis=0), np.mean([p[1] for p in parts], axis=0)
    return _linear_of_pipeline(model)


def class_maps(A: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-class evidence weights (K, D) and offsets (K,): two classes from one binary logit (signed), else each
    class's logit minus the mean logit (the part the softmax sees)."""
    if A.shape[0] == 1:
        return np.vstack([-A[0], A[0]]), np.array([-b[0], b[0]])
    return A - A.mean(axis=0, keepdims=True), b - b.mean()


# ------------------------------------------------------------------ maps

def _resize(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of (N, h, w) maps to (N, H, W) = ``size`` (height, width), keeping cell centres aligned."""
    from scipy.ndimage import map_coordinates

    n, h, w = maps.shape
    H, W = size
    yy = (np.arange(H) + 0.5) * h / H - 0.5
    xx = (np.arange(W) + 0.5) * w / W - 0.5
    gy, gx = np.meshgrid(yy, xx, indexing="ij")
    coords = [np.broadcast_to(np.arange(n)[:, None, None], (n, H, W)), np.broadcast_to(gy, (n, H, W)),
              np.broadcast_to(gx, (n, H, W))]  # one call for the whole stack (map index never interpolates)
    return map_coordinates(maps, coords, order=1, mode="nearest")


def cam_maps(acts: Sequence[np.ndarray], W: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Exact CAMs: ``acts`` per tapped layer (N, h_t, w_t, D_t) in feature order, ``W`` (K, sum D_t).

    Returns the maps (N, K, H, W) at ``size`` and the per-layer-grid logit parts (N, K): the spatial mean of each
    layer's map before resizing, summed over layers (plus the offsets, the exact logits)."""
    n = acts[0].shape[0]
    k = W.shape[0]
    out = np.zeros((n, k, *size))
    parts = np.zeros((n, k))
    start = 0
    for a in acts:
        d = a.shape[-1]
        m = np.einsum("nhwd,kd->nkhw", a.astype(np.float64), W[:, start:start + d])
        start += d
        parts += m.mean(axis=(2, 3))
        out += _resize(m.reshape(n * k, *m.shape[2:]), size).reshape(n, k, *size)
    if start != W.shape[1]:
        raise AlzmriError(f"the head expects {W.shape[1]} features but the backbone's taps give {start}; "
                          "the bundle and the backbone do not match")
    return out, parts


def target_cams(acts: Sequence[np.ndarray], W: np.ndarray, target: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``cam_maps`` for one class per image (``target``, (N,)): (N, H, W); the predicted stage's map only, so the
    cost per slice does not grow with the number of classes."""
    n = acts[0].shape[0]
    out = np.zeros((n, *size))
    start = 0
    for a in acts:
        d = a.shape[-1]
        m = np.einsum("nhwd,nd->nhw", a, W[target, start:start + d].astype(a.dtype))
        start += d
        out += _resize(m.astype(np.float64), size)
    return out


def occlusion_map(images: np.ndarray, predict: Callable[[np.ndarray], np.ndarray], target: Sequence[int], *,
                  patch: float = OCCLUSION_PATCH, stride: float = OCCLUSION_STRIDE, batch_size: int = 32) -> np.ndarray:
    """Occlusion sensitivity (N, H, W) of uint8 ``images`` (N, H, W, 3) for class ``target[i]``.

    ``predict`` maps a uint8 batch to class probabilities (n, K). Each pixel gets the mean drop in the target
    probability over the patches that cover it (grey patch = the slice's mean intensity)."""
    n, H, W = images.shape[:3]
    ph, pw = max(1, round(patch * H)), max(1, round(patch * W))
    sh, sw = max(1, round(stride * H)), max(1, round(stride * W))
    ys = list(range(0, max(1, H - ph) + 1, sh))
    xs = list(range(0, max(1, W - pw) + 1, sw))
    if ys[-1] + ph < H:
        ys.append(H - ph)
    if xs[-1] + pw < W:
        xs.append(W - pw)
    boxes = [(y, x) for y in ys for x in xs]
    out = np.zeros((n, H, W))
    for i in range(n):
        img = images[i]
        fill = img.reshape(-1, img.shape[-1]).mean(axis=0).astype(np.uint8)
        copies = np.repeat(img[None], len(boxes) + 1, axis=0)
        for j, (y, x) in enumerate(boxes, start=1):
            copies[j, y:y + ph, x:x + pw] = fill
        probs = np.concatenate([predict(copies[s:s + batch_size]) for s in range(0, len(copies), batch_size)])
        drop = probs[0, target[i]] - probs[1:, target[i]]
        total, count = np.zeros((H, W)), np.zeros((H, W))
        for d, (y, x) in zip(drop, boxes):
            total[y:y + ph, x:x + pw] += d
            count[y:y + ph, x:x + pw] += 1
        out[i] = total / np.maximum(count, 1)
    return out


# ------------------------------------------------------------------ the backbone, with spatial outputs

def spatial_model(spec: dict[str, Any], weights: str | None = None) -> tuple[Callable[[np.ndarray], list[np.ndarray]], int]:
    """A TF forward pass returning the bundle's tapped layers *unpooled* (list of (N, h, w, D)), refusing other
    weights than the head was trained on (as ``predict`` does); and the batch size it was traced for."""
    import tensorflow as tf

    from classify.predict import _weights_arg
    from featurize.backbones import build_base, get_backbone, prefix_checksums, resolve_layers
    from featurize.devices import precision_policy
    from featurize.errors import WeightsError
    from featurize.spec import FeatureSpec
    from featurize.weights_catalog import preprocess_fn

    bb = get_backbone(spec["backbone"])
    size = FeatureSpec.from_attrs(spec).size
    with precision_policy(str(spec.get("precision") or "float32")):
        base = build_base(bb, _weights_arg(str(spec["weights"]), weights, bb.name), size, seed=int(spec.get("seed", 0) or 0))
    names = [] if spec.get("layers", "last") == "last" else resolve_layers(bb, str(spec["layers"]).replace("+", ","))
    tensors = [base.output if n == "last" else base.get_layer(n).output for n in (names or ["last"])]
    want = str(spec.get("weights_sha256") or "")
    if want and want not in prefix_checksums(base):
        raise WeightsError(f"the {bb.name} weights loaded now differ from those the model was trained on; "
                           "explanations would not match its features, so predict refuses")
    import keras

    model = keras.Model(base.input, tensors)
    pre = preprocess_fn(bb, spec.get("preprocess") or "")  # the weights' own, as featurize used

    @tf.function(reduce_retracing=True)
    def forward(x: Any) -> Any:
        return model(pre(tf.cast(x, tf.float32)), training=False)

    def run(batch: np.ndarray) -> list[np.ndarray]:
        out = forward(tf.constant(batch))
        out = out if isinstance(out, (list, tuple)) else [out]
        return [np.asarray(o, dtype=np.float32) for o in out]

    return run, len(tensors)


# ------------------------------------------------------------------ pictures

def _overlay(ax: Any, img: np.ndarray, heat: np.ndarray, title: str) -> None:
    lim = float(np.max(np.abs(heat))) or 1.0
    ax.imshow(img[..., 0] if img.ndim == 3 else img, cmap="gray", vmin=0, vmax=255)
    ax.imshow(heat, cmap="RdBu_r", vmin=-lim, vmax=lim, alpha=0.45)
    ax.set_title(title, fontsize=7)
    ax.set_axis_off()


def slice_png(path: Path, img: np.ndarray, heat: np.ndarray, title: str) -> Path:
    """The slice with its heatmap (red = for the predicted stage, blue = against), one PNG."""
    from matplotlib.figure import Figure

    from classify.plots import _save

    fig = Figure(figsize=(3.4, 3.8), layout="constrained")
    _overlay(fig.add_subplot(), img, heat, title)
    return _save(fig, path)


def montage_png(path: Path, items: Sequence[tuple[np.ndarray, np.ndarray, str]], title: str) -> Path:
    """A grid of a subject's slices with their heatmaps."""
    from matplotlib.figure import Figure

    from classify.plots import _save

    cols = min(MONTAGE_COLUMNS, len(items))
    rows = int(np.ceil(len(items) / cols))
    fig = Figure(figsize=(1.9 * cols, 2.2 * rows + 0.4), layout="constrained")
    for i, (img, heat, t) in enumerate(items):
        name, rest = (t.split("\n", 1) + [""])[:2]
        short = name if len(name) <= 22 else "…" + name[-21:]  # long file names would run into the neighbours
        _overlay(fig.add_subplot(rows, cols, i + 1), img, heat, f"{short}\n{rest}")
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def _stem(path: str, used: set[str]) -> str:
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(path).stem) or "slice"
    out, k = s, 1
    while out in used:
        k += 1
        out = f"{s}-{k}"
    used.add(out)
    return out


# ------------------------------------------------------------------ the command

def explain_files(bundle: Any, files: Sequence[str], table: Any, out_dir: str | os.PathLike[str], *, method: str = "auto",
                  batch_size: int = 32, weights: str | None = None, engines: str | os.PathLike[str] | None = None,
                  log: Log = lambda s: None) -> list[Path]:
    """Write a heatmap PNG per readable slice and a montage per subject (``table["subject"]`` when present, else
    one montage of all) into ``out_dir``; returns the written paths. ``table`` is predict's per-file table."""
    from featurize.pipeline import image_batches
    from featurize.spec import FeatureSpec

    method = choose("--explain-method", method, METHODS)
    if bundle is None:
        raise AlzmriError("--explain works with .joblib head bundles from `alzmri classify`, not with .keras models")
    spec = bundle.backbone
    lin = linear_map(bundle.pipeline)
    cam_ok = lin is not None and spec.get("pooling", "avg") == "avg"
    if method == "cam" and not cam_ok:
        raise AlzmriError(f"--explain-method cam needs a linear head (logreg) on average-pooled features; this bundle "
                          f"is {bundle.head} with {spec.get('pooling', 'avg')} pooling: use --explain-method occlusion")
    method = "cam" if method == "auto" and cam_ok else ("occlusion" if method == "auto" else method)
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    size = FeatureSpec.from_attrs(spec).size
    names = list(bundle.class_names)
    if method == "cam":
        Wk, bk = class_maps(*lin)
        spatial, _ = spatial_model(spec, weights)
    else:
        from classify.predict import _forward_from_card, _forward_from_tf
        from featurize.backbones import get_backbone

        forward = (_forward_from_card(spec, weights, batch_size, engines) if engines is not None else None) or \
            _forward_from_tf(spec, get_backbone(spec["backbone"]), weights, batch_size, log)

        def predict(batch: np.ndarray) -> np.ndarray:
            return bundle.predict_proba(forward(batch))
    subjects = table["subject"].astype(str).tolist() if "subject" in table else ["all"] * len(files)
    per_subject: dict[str, list[tuple[np.ndarray, np.ndarray, str]]] = {}
    written: list[Path] = []
    used: set[str] = set()
    done = 0
    for images, errors in image_batches(list(files), size, spec.get("resize", "stretch"), batch_size):
        ok = [i for i, e in enumerate(errors) if not e]
        idx = [done + i for i in ok]
        done += len(errors)
        if not ok:
            continue
        imgs = images[ok]
        if method == "cam":
            acts = spatial(imgs)
            feats = np.concatenate([a.mean(axis=(1, 2)) for a in acts], axis=1)
            proba = bundle.predict_proba(feats)
            target = proba.argmax(axis=1)
            heats = target_cams(acts, Wk, target, imgs.shape[1:3])
        else:
            proba = predict(imgs)
            target = proba.argmax(axis=1)
            heats = occlusion_map(imgs, predict, target, batch_size=batch_size)
        for j, i in enumerate(idx):
            title = f"{Path(files[i]).name}\n{names[target[j]]} {proba[j, target[j]]:.2f} ({method})"
            written.append(slice_png(out / f"{_stem(files[i], used)}.png", imgs[j], heats[j], title))
            per_subject.setdefault(subjects[i], []).append((imgs[j], heats[j], title))
    for s, items in per_subject.items():
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", s) or "subject"
        written.append(montage_png(out / f"montage__{safe}.png", items, f"subject {s}: {len(items)} slices ({method}; "
                                   "red = evidence for the predicted stage)"))
    log(f"explanations ({method}): {len(written) - len(per_subject)} slices, {len(per_subject)} montage(s) in {out}")
    return written
