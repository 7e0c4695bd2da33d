"""Explanations: the folded linear map is exact, CAMs add up to the logits, and on synthetic brains whose only stage
signal is in the ventricles and sulci the CAM puts its evidence there (and a CAM with shuffled channels does not)."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import pytest
from sklearn.calibration import CalibratedClassifierCV
from sklearn.linear_model import LogisticRegression

from classify.explain import cam_maps, class_maps, linear_map, occlusion_map
from classify.heads import make_head


@pytest.mark.parametrize("k, pca", [(2, None), (3, 5), (4, 6)])
def test_folded_linear_map_equals_the_heads_decision(k: int, pca: int | None) -> None:
    rng = np.random.default_rng(k)
    X, y = rng.normal(size=(80, 12)) * rng.uniform(0.5, 3, 12) + 2, np.arange(80) % k
    head = make_head("logreg", pca).fit(X, y)
    A, b = linear_map(head)
    assert np.allclose(X @ A.T + b, head.decision_function(X).reshape(80, -1), atol=1e-8)
    cal = CalibratedClassifierCV(make_head("logreg", pca), method="sigmoid", cv=3).fit(X, y)
    A2, b2 = linear_map(cal)
    members = np.mean([c.estimator.decision_function(X).reshape(80, -1) for c in cal.calibrated_classifiers_], axis=0)
    assert np.allclose(X @ A2.T + b2, members, atol=1e-8)
    assert linear_map(make_head("svm", None).fit(X, y)) is None  # not linear: occlusion instead


def test_cam_spatial_means_are_exactly_the_logits() -> None:
    rng = np.random.default_rng(0)
    acts = [rng.normal(size=(5, 6, 4, 7)), rng.normal(size=(5, 3, 2, 9))]  # two tapped layers, avg-pooled and joined
    feats = np.concatenate([a.mean(axis=(1, 2)) for a in acts], axis=1)
    W, b = class_maps(rng.normal(size=(3, 16)), rng.normal(size=3))
    maps, parts = cam_maps(acts, W, (24, 16))
    assert maps.shape == (5, 3, 24, 16)
    assert np.allclose(parts + b, feats @ W.T + b)
    # bilinear upsampling keeps the mean of each layer's map up to edge effects
    assert np.allclose(maps.mean(axis=(2, 3)), parts, atol=0.15 * np.abs(parts).max())


def test_occlusion_finds_the_only_pixels_the_model_reads() -> None:
    imgs = np.full((2, 40, 40, 3), 100, np.uint8)
    imgs[:, 5:12, 25:33] = 220  # the "model" reads only this bright box

    def predict(batch: np.ndarray) -> np.ndarray:
        p = batch[:, 5:12, 25:33, 0].mean(axis=(1, 2)) / 255.0
        return np.column_stack([1 - p, p])

    heat = occlusion_map(imgs, predict, [1, 1], batch_size=7)
    assert heat.shape == (2, 40, 40) and heat[:, 5:12, 25:33].mean() > 5 * max(heat[:, 25:, :20].mean(), 1e-6)


# ------------------------------------------------------------------ validation on synthetic brains (TF, ImageNet)

SIZE = (112, 132)
KERAS_HOME = Path(__file__).resolve().parents[3] / "shared" / "keras_home"


@pytest.fixture
def shared_keras_home(monkeypatch: pytest.MonkeyPatch) -> None:
    """ImageNet MobileNetV2 from ../shared/keras_home (random-init features carry no usable signal here)."""
    if not (KERAS_HOME / "models").is_dir():
        pytest.skip("ImageNet MobileNetV2 weights not present (../shared/keras_home)")
    monkeypatch.setenv("KERAS_HOME", str(KERAS_HOME))
    # Keras reads KERAS_HOME once, when it is first imported (the session points it at a temp folder): set its copy
    import keras.src.backend.config as keras_config

    monkeypatch.setattr(keras_config, "_KERAS_DIR", str(KERAS_HOME))


def _brains(n_subjects: int = 10, slices: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Non-demented vs moderate subjects whose stage shows only in the ventricles and sulci (cortex, hippocampus and
    brain size kept at the non-demented values); the signal region is where that subject's slices change when its
    ventricles and sulci are given the other stage's size (same anatomy, same noise), dilated by 2 pixels."""
    from scipy.ndimage import binary_dilation

    from featurize import phantom

    imgs, masks, ys, subj = [], [], [], []
    for stage in (0, 3):
        other = 3 - stage
        for j in range(n_subjects):
            rng = np.random.default_rng([7, stage, j])
            a = phantom.make_subject(stage, rng)
            a = dataclasses.replace(a, cortex=a.cortex * phantom._CORTEX[0] / phantom._CORTEX[stage], shrink=0.0,
                                    hippocampus=a.hippocampus * phantom._HIPPOCAMPUS[0] / phantom._HIPPOCAMPUS[stage])
            alt = dataclasses.replace(a, ventricles=a.ventricles * phantom._VENTRICLES[other] / phantom._VENTRICLES[stage],
                                      sulci=a.sulci * phantom._SULCI[other] / phantom._SULCI[stage])
            twin = copy.deepcopy(rng)
            im = phantom.render_slices(a, slices, SIZE, rng)
            diff = np.abs(im.astype(float) - phantom.render_slices(alt, slices, SIZE, twin)) > 25
            imgs += list(im)
            masks += [binary_dilation(m, iterations=2) for m in diff]
            ys += [int(stage > 0)] * slices
            subj += [f"{stage}-{j}"] * slices
    return np.repeat(np.stack(imgs)[..., None], 3, axis=-1), np.stack(masks), np.array(ys), np.array(subj)


def _share(heat: np.ndarray, masks: np.ndarray) -> float:
    """Positive evidence above each slice's own mean, inside the region, as a share of all of it."""
    pos = np.clip(heat - heat.mean(axis=(1, 2), keepdims=True), 0, None)
    return float((pos * masks).sum() / pos.sum())


@pytest.mark.tf
@pytest.mark.slow
def test_cam_evidence_sits_in_the_ventricles_and_sulci(shared_keras_home: None) -> None:
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from classify.explain import spatial_model

    imgs, masks, y, subj = _brains()
    spec = {"backbone": "mobilenetv2", "weights": "imagenet", "image_size": f"{SIZE[0]}x{SIZE[1]}",
            "layers": "block_6_expand_relu"}
    run, _ = spatial_model(spec)
    acts = run(imgs)
    feats = np.concatenate([a.mean(axis=(1, 2)) for a in acts], axis=1)
    train = np.array([int(s.split("-")[1]) < 6 for s in subj])  # subjects 0-5 per class train, 6-9 test
    head = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=3000)).fit(feats[train], y[train])
    assert head.score(feats[~train], y[~train]) >= 0.8
    W, _ = class_maps(*linear_map(head))
    sick = y == 1  # the stage signal: CSF spaces enlarged by atrophy, explained for the demented class
    maps, _ = cam_maps([a[sick] for a in acts], W, SIZE[::-1])
    area = float(masks[sick].mean())
    share = _share(maps[:, 1], masks[sick])
    shuffled, _ = cam_maps([a[sick] for a in acts], W[:, np.random.default_rng(0).permutation(W.shape[1])], SIZE[::-1])
    wrong = _share(shuffled[:, 1], masks[sick])
    assert share > 1.4 * area and wrong < 1.15 * area


def test_target_cams_pick_each_images_class_map() -> None:
    from classify.explain import target_cams

    rng = np.random.default_rng(1)
    acts = [rng.normal(size=(4, 5, 3, 6)).astype(np.float32)]
    W = rng.normal(size=(3, 6))
    target = np.array([2, 0, 1, 2])
    maps, _ = cam_maps(acts, W, (10, 6))
    assert np.allclose(target_cams(acts, W, target, (10, 6)), maps[np.arange(4), target], atol=1e-4)
