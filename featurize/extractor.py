"""The feature model of a featurize pass: from a model card and its verified ONNX export without TensorFlow, else
built with TF (exported once, and a card left for the next run).

Every layer choice of one pass shares one backbone: the outputs are concatenated, and ``FeatureModel.dims`` gives
each choice's columns. The weights checksum always covers the whole backbone (``backbones.weights_checksum``).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

from featurize.backbones import Backbone, build_base, feature_model, prefix_checksums, resolve_layers
from featurize.config import engines_dir
from featurize.engines import Forward
from featurize.spec import FeatureSpec
from featurize.timing import phase

Log = Callable[[str], None]


@dataclass(frozen=True)
class ModelSpec:
    """Everything that decides the feature model and how it runs."""

    bb: Backbone
    weights: str
    settings: dict[str, Any]
    choices: list[str]
    layer_tags: list[str]
    seed: int
    engine: str
    batch_size: int
    artifacts: Any
    precision: str
    devices: str


class FeatureModel(NamedTuple):
    """A feature model ready to run: its forward pass, the engine, the whole-backbone weights checksum, the column
    width of each layer choice, and per layer tag the checksums alzmri 0.1.0 recorded for these weights."""

    forward: Forward
    engine: str
    sha: str
    dims: list[int]
    legacy: dict[str, frozenset[str]]


def from_card(spec: ModelSpec) -> FeatureModel | None:
    """The model from a model card and its verified export, without TF; else None."""
    from featurize import modelcard

    if spec.devices == "mirrored":
        return None
    got = modelcard.cached_forward(engines_dir(spec.artifacts), spec.settings, spec.layer_tags, spec.seed, spec.engine,
                                   spec.batch_size)
    return None if got is None else FeatureModel(*got, legacy={})


def from_tf(spec: ModelSpec, log: Log) -> FeatureModel:
    """Build the model with TF, pick the engine (exporting once), and leave a card so the next run can skip TF."""
    from featurize import devices, modelcard
    from featurize.engines import engine_key, is_light, make_engine
    from featurize.tfquiet import import_tensorflow

    with phase("import"):  # the first TF import of a run: here, before the devices are asked for
        import_tensorflow()
    st = spec.settings
    strategy = devices.make_strategy(spec.devices)
    model, preprocess, dims, sha, legacy = devices.build_feature_model(
        lambda: build(spec.bb, spec.weights, st, spec.choices, spec.seed), strategy, spec.precision)
    legacy = dict(zip(spec.layer_tags, legacy))
    if spec.precision != "float32" or devices.replicas(strategy) > 1:
        if spec.engine in ("onnx", "openvino"):
            log(f"engine {spec.engine}: mixed precision and several devices run on TF; using tf")
        return FeatureModel(devices.distributed_forward(model, preprocess, spec.batch_size, strategy), "tf", sha, dims, legacy)
    key = engine_key(st["backbone"], sha, st["image_size"], spec.choices, st["pooling"], st.get("preprocess", ""))
    folder = engines_dir(spec.artifacts)
    forward, used = make_engine(model, preprocess, spec.batch_size, spec.engine, cache_dir=folder, key=key, log=log,
                                on_export=lambda: log(f"{st['backbone']}: exporting the model to ONNX for the fast "
                                                      "engine, once (later runs and other datasets reuse it without "
                                                      "TensorFlow)"))
    source = modelcard.weights_source(st["backbone"], st["weights"], spec.seed)
    if used != "tf" and source is not None:
        hw = (int(model.input_shape[1]), int(model.input_shape[2]))
        with contextlib.suppress(OSError):  # a card only saves time; failing to write one costs nothing else
            modelcard.write_card(modelcard.card_path(folder, st, spec.layer_tags, spec.seed), source, sha, dims, key, hw,
                                 light=is_light(model), tags=spec.layer_tags)
    return FeatureModel(forward, used, sha, dims, legacy)


def build(bb: Backbone, weights: str, settings: dict[str, Any], choices: list[str],
           seed: int) -> tuple[Any, Any, list[int], str, list[frozenset[str]]]:
    """One model for every layer choice: outputs concatenated, with the column width of each choice, the whole
    backbone's weights checksum, and per choice the legacy checksums that identify the same weights."""
    from featurize.tfquiet import import_tensorflow

    with phase("import"):
        import_tensorflow()  # TF is imported only on this path, so a fully cached rerun never pays for it
        import keras

    from featurize.weights_catalog import preprocess_fn

    fspec = FeatureSpec.from_attrs(settings)
    with phase("build"):
        base = build_base(bb, weights, fspec.size, seed=seed)
        heads = [feature_model(base, resolve_layers(bb, c), fspec.pooling, prefix=f"c{i}_" if i else "")
                 for i, c in enumerate(choices)]
    dims = [int(m.output.shape[-1]) for m in heads]
    with phase("checksum"):
        prefixes = prefix_checksums(base)  # one pass over the weights serves the checksum and the legacy ones
    sha = prefixes[-1]
    legacy = [frozenset(prefixes[len(m.weights) - 1:]) for m in heads]
    if len(heads) == 1:
        return heads[0], preprocess_fn(bb, fspec.preprocess), dims, sha, legacy
    outs = keras.layers.Concatenate(name="all_choices")([m.output for m in heads])
    return keras.Model(base.input, outs, name=f"{base.name}_choices"), preprocess_fn(bb, fspec.preprocess), dims, sha, legacy
