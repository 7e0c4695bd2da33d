"""The weights catalog (issue 15) and FeatureSpec (issue 13): names resolve to a backbone, a source, preprocessing and
a native size; a file's own preprocessing reaches the features and the bundle; old cache names and fingerprints stay."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from featurize import store
from featurize.engines import engine_key
from featurize.errors import WeightsError
from featurize.modelcard import card_path
from featurize.run import settings_for
from featurize.spec import FeatureSpec
from featurize.weights_catalog import CATALOG_ENV, preprocess_fn, read_catalog, resolve, resolve_tag


def _catalog(tmp: Path, body: str, weights: bytes = b"not really weights") -> Path:
    (tmp / "w").mkdir(exist_ok=True)
    (tmp / "w" / "mine.weights.h5").write_bytes(weights)
    path = tmp / "catalog.toml"
    path.write_text(body)
    return path


ENTRY = """
[weights.my-vgg]
backbone = "vgg16"
file = "w/mine.weights.h5"
preprocess = "rgb01"
input_size = "240x200"
provenance = "a test file"
"""


def test_entry_resolves_backbone_preprocessing_size_and_a_content_tag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CATALOG_ENV, str(_catalog(tmp_path, ENTRY)))
    choice = resolve("my-vgg")  # no --backbone: the entry's
    assert choice.backbone.name == "vgg16" and choice.preprocess == "rgb01" and choice.input_size == (240, 200)
    assert Path(choice.load) == (tmp_path / "w" / "mine.weights.h5").resolve()  # relative to the TOML file
    assert choice.tag.startswith("my-vgg-") and len(choice.tag) == len("my-vgg-") + 10
    # a changed file under the same name gets a new tag: its cache never mixes with the old rows
    (tmp_path / "w" / "mine.weights.h5").write_bytes(b"other bytes")
    assert resolve("my-vgg").tag != choice.tag
    assert resolve_tag(resolve("my-vgg").tag, "vgg16") == choice.load
    assert resolve_tag(choice.tag, "vgg16") is None  # the file changed since: the old tag names no file now

    st = settings_for(None, "my-vgg", None, "avg", "stretch", "last")
    assert st["preprocess"] == "rgb01" and st["image_size"] == "240x200" and st["backbone"] == "vgg16"


def test_builtins_and_paths_keep_their_old_labels(tmp_path: Path) -> None:
    assert resolve("imagenet", "mobilenetv2").tag == "imagenet"
    assert resolve("none", "resnet50").tag == "random-init" and resolve("random", "resnet50").load == "none"
    f = tmp_path / "x.h5"
    f.write_bytes(b"abc")
    got = resolve(str(f), "mobilenetv2")
    assert got.tag.startswith("file-") and got.preprocess == "" and got.input_size == (224, 224)
    st = settings_for("mobilenetv2", "imagenet", None, "avg", "stretch", "last")
    assert "preprocess" not in st and store.cache_name(st) == "mobilenetv2__imagenet__224x224__avg__stretch__last.h5"


@pytest.mark.parametrize("body, words", [
    ('[weights.a]\nbackbone = "vgg16"\nfile = "w/mine.weights.h5"\npreprocess = "bgr"\n', "preprocess"),
    ('[weights.a]\nbackbone = "vgg99"\nfile = "w/mine.weights.h5"\n', "vgg99"),
    ('[weights.a]\nbackbone = "vgg16"\nfile = "w/mine.weights.h5"\ncolour = 1\n', "unknown key 'colour'"),
    ('[weights.a]\nfile = "w/mine.weights.h5"\n', "needs backbone"),
    ('[weights.imagenet]\nbackbone = "vgg16"\nfile = "w/mine.weights.h5"\n', "built-in"),
    ('[weights.Big]\nbackbone = "vgg16"\nfile = "w/mine.weights.h5"\n', "lower-case"),
    ('[weights.a]\nbackbone = "vgg16"\nfile = "w/mine.weights.h5"\ninput_size = "big"\n', "[weights.a]"),
    ("[weights.a\n", "not a readable TOML"),
])
def test_bad_catalogs_name_the_file_and_the_entry(tmp_path: Path, body: str, words: str) -> None:
    path = _catalog(tmp_path, body)
    with pytest.raises(WeightsError) as err:
        read_catalog(path)
    msg = str(err.value)
    assert str(path) in msg and words in msg and "\n" not in msg


def test_resolve_refuses_what_does_not_fit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CATALOG_ENV, str(_catalog(tmp_path, ENTRY + 'sha256 = "00ff"\n')))
    with pytest.raises(WeightsError, match="does not match entry 'my-vgg'"):
        resolve("my-vgg")
    monkeypatch.setenv(CATALOG_ENV, str(_catalog(tmp_path, ENTRY)))
    with pytest.raises(WeightsError, match="are vgg16 weights, not mobilenetv2"):
        resolve("my-vgg", "mobilenetv2")
    with pytest.raises(WeightsError, match=r"neither a weights name \(imagenet, my-vgg, none\) nor a file"):
        resolve("no-such-weights")
    monkeypatch.setenv(CATALOG_ENV, str(tmp_path / "missing.toml"))
    with pytest.raises(WeightsError, match="missing.toml: weights catalog named by"):
        resolve("imagenet")


def test_the_preprocessing_is_part_of_the_export_key_and_the_card() -> None:
    plain = {"backbone": "vgg16", "weights": "my-vgg-0123456789", "image_size": "240x240", "pooling": "avg"}
    own = {**plain, "preprocess": "rgb01"}
    assert engine_key("vgg16", "ab" * 32, "240x240", "last", "avg") != engine_key("vgg16", "ab" * 32, "240x240", "last", "avg", "rgb01")
    assert card_path("e", plain, ["last"], 0) != card_path("e", own, ["last"], 0)
    x = np.full((1, 2, 2, 3), 255.0)
    assert np.allclose(preprocess_fn(None, "rgb01")(x), 1.0) and np.allclose(preprocess_fn(None, "tf")(x), 1.0)  # type: ignore[arg-type]


def test_feature_spec_round_trips_and_keeps_old_names_and_fingerprints() -> None:
    old = {"backbone": "mobilenetv2", "weights": "imagenet", "weights_sha256": "ab", "image_size": "176x208",
           "pooling": "max", "resize": "pad", "layers": "block_13_expand_relu"}
    spec = FeatureSpec.from_attrs(old)
    assert spec.size == (176, 208) and spec.to_attrs() == old
    assert FeatureSpec.from_attrs(spec.to_attrs()) == spec
    assert spec.cache_name() == "mobilenetv2__imagenet__176x208__max__pad__block_13_expand_relu.h5"
    assert spec.variant_tag() == "176x208-max-pad" and spec.with_(size=(224, 224), pooling="avg", resize="stretch").variant_tag() == ""
    # the fingerprint of a cache written before precision/preprocess existed is unchanged (pinned value)
    assert store.fingerprint(old, np.array(["a.png"]), np.array(["s"])) == "e26cc8df57c4af8a"
    with_pre = {**old, "preprocess": "rgb01"}
    assert store.fingerprint(with_pre, np.array(["a.png"]), np.array(["s"])) != store.fingerprint(old, np.array(["a.png"]), np.array(["s"]))


@pytest.mark.tf
@pytest.mark.slow
def test_a_files_own_preprocessing_reaches_the_features_and_predict(kaggle_root: Path, artifacts: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A catalog file with RGB/255 preprocessing: the cached features are the backbone's on x/255 (not on the
    architecture's x/127.5 - 1), and predict, given only the bundle, finds the file through the catalog."""
    from classify.bundle import load_bundle
    from classify.predict import predict_paths
    from classify.run import classify_dataset
    from featurize.backbones import build_base, feature_model, get_backbone
    from featurize.pipeline import image_batches
    from featurize.run import featurize_dataset

    bb = get_backbone("mobilenetv2")
    weights = tmp = artifacts.parent / "w"
    tmp.mkdir()
    weights = tmp / "mine.weights.h5"
    base = build_base(bb, "none", (64, 64), seed=3)
    base.save_weights(str(weights))
    catalog = tmp / "catalog.toml"
    catalog.write_text(f'[weights.tiny]\nbackbone = "mobilenetv2"\nfile = "{weights.name}"\npreprocess = "rgb01"\ninput_size = "64x64"\n')
    monkeypatch.setenv(CATALOG_ENV, str(catalog))

    res = featurize_dataset(kaggle_root, weights="tiny", engine="tf", progress=False, subjects="none")
    assert res.settings["preprocess"] == "rgb01" and res.settings["image_size"] == "64x64"
    fs = store.load(res.cache)
    model = feature_model(base, [], "avg")
    images = np.concatenate([b for b, _ in image_batches([str(kaggle_root / p) for p in fs.paths], (64, 64), "stretch", 8)])
    own = model.predict(images.astype(np.float32) / 255.0, verbose=0)
    default = model.predict(bb.preprocess_fn()(images.astype(np.float32)), verbose=0)
    def rel(a: np.ndarray, b: np.ndarray) -> float:  # random-init activations are tiny: compare relatively
        return float(np.abs(a - b).max() / np.abs(b).max())

    assert rel(fs.X, own) < 1e-4
    assert rel(fs.X, default) > 0.05  # the two preprocessings really differ here

    df = classify_dataset(kaggle_root, heads="logreg", artifacts=artifacts, progress=False, n_jobs=1, log=lambda s: None)
    bundle = Path(df.attrs["bundles"][0])
    assert load_bundle(bundle).backbone["preprocess"] == "rgb01"
    files = [str(kaggle_root / p) for p in fs.paths[:4]]
    table, _ = predict_paths(bundle, files)  # no --weights: the bundle's tag names the catalog entry
    probs = load_bundle(bundle).predict_proba(fs.X[:4])
    got = table[[c for c in table.columns if c.startswith("p_")]].to_numpy(dtype=float)
    assert np.abs(got - probs).max() < 1e-4
