"""The GPU code path run on CPU: mirrored over 2 logical CPUs, mixed precision, and their failure modes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from featurize.devices import (
    DEVICE_MODES,
    PRECISIONS,
    build_feature_model,
    distributed_forward,
    make_strategy,
    policy_name,
    precision_policy,
    replicas,
)
from featurize.errors import AlzmriError

pytestmark = [pytest.mark.tf, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]

# Logical devices can only be configured before TF initialises, so this runs in a fresh interpreter.
_TWO_CPUS = r"""
import json, os
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from featurize.backbones import build_base, feature_model, get_backbone
from featurize.devices import build_feature_model, distributed_forward, make_strategy, replicas, training_scope
from featurize.pipeline import make_forward

out = {}
bb = get_backbone("mobilenetv2")
pre = bb.preprocess_fn()
build = lambda: feature_model(build_base(bb, "none", (64, 64), seed=0), [], "avg")
reference = build()
strategy = make_strategy("mirrored")
out["replicas"] = replicas(strategy)
model = build_feature_model(build, strategy, "float32")
model.set_weights(reference.get_weights())
out["forward_vars_mirrored"] = all(type(v.value).__name__ == "MirroredVariable" for v in model.weights)
images = np.random.default_rng(1).integers(0, 256, (8, 64, 64, 3), dtype=np.uint8)
single, mirrored = make_forward(reference, pre, 8), distributed_forward(model, pre, 7, strategy)  # 7 -> 8
for n in (1, 5, 8):
    a, b = single(images[:n]), mirrored(images[:n])
    out[f"forward_{n}"] = {"shape": list(b.shape), "dtype": str(b.dtype),
                           "rel": float(np.abs(a - b).max() / np.abs(a).max())}
# How far apart rows are, so that a misordering could not pass the tolerance above.
a = single(images)
out["row_gap"] = float(min(np.abs(a[i] - a[j]).max() for i in range(8) for j in range(i)) / np.abs(a).max())

with training_scope("mirrored", "mixed") as strategy:
    out["train_replicas"] = replicas(strategy)
    out["train_policy"] = keras.mixed_precision.global_policy().name
    cnn = keras.Sequential([
        keras.Input((16, 16, 1)),
        keras.layers.Conv2D(4, 3, activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(2),
        keras.layers.Activation("softmax", dtype="float32"),
    ])
    cnn.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
rng = np.random.default_rng(0)
hist = cnn.fit(rng.random((32, 16, 16, 1), np.float32), rng.integers(0, 2, 32), batch_size=8, epochs=1, verbose=0)
out["train_loss"] = float(hist.history["loss"][-1])
out["train_vars_mirrored"] = all(strategy.extended.variable_created_in_scope(v.value) for v in cnn.weights)
out["train_var_types"] = sorted({type(v.value).__name__ for v in cnn.weights})
out["conv_compute_dtype"] = cnn.layers[0].compute_dtype
out["output_dtype"] = cnn.layers[-1].compute_dtype
out["policy_after"] = keras.mixed_precision.global_policy().name
print("RESULT " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def two_cpus() -> dict[str, Any]:
    """Run the 2-logical-CPU script once; its measurements as a dict."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run([sys.executable, "-c", _TWO_CPUS], check=False, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT "):])


def test_mirrored_forward_over_two_cpus_matches_make_forward_in_order(two_cpus: dict[str, Any]) -> None:
    assert two_cpus["replicas"] == 2
    assert two_cpus["forward_vars_mirrored"]
    for n in (1, 5, 8):
        got = two_cpus[f"forward_{n}"]
        assert got["shape"] == [n, 1280] and got["dtype"] == "float32"
        assert got["rel"] <= 1e-5
    assert two_cpus["row_gap"] > 1e-3  # rows differ far more than the tolerance: order is really checked


def test_training_scope_mirrored_mixed_fits_with_mirrored_variables(two_cpus: dict[str, Any]) -> None:
    assert two_cpus["train_replicas"] == 2
    assert two_cpus["train_policy"] == "mixed_bfloat16"
    assert np.isfinite(two_cpus["train_loss"])
    assert two_cpus["train_vars_mirrored"] and two_cpus["train_var_types"] == ["MirroredVariable"]
    assert two_cpus["conv_compute_dtype"] == "bfloat16" and two_cpus["output_dtype"] == "float32"
    assert two_cpus["policy_after"] == "float32"


def _no_gpu() -> None:
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("expectations are for a CPU-only machine")


def test_auto_on_cpu_is_the_default_strategy_and_bad_names_raise() -> None:
    import tensorflow as tf

    _no_gpu()
    strategy = make_strategy("auto")
    assert strategy is tf.distribute.get_strategy() and replicas(strategy) == 1
    assert make_strategy("one") is tf.distribute.get_strategy()
    assert replicas(make_strategy("mirrored")) == len(tf.config.list_logical_devices("CPU"))
    with pytest.raises(AlzmriError, match="auto, one, mirrored"):
        make_strategy("many")
    with pytest.raises(AlzmriError, match="float32, mixed"):
        policy_name("half")
    assert DEVICE_MODES == ("auto", "one", "mirrored") and PRECISIONS == ("float32", "mixed")


def test_precision_policy_sets_bfloat16_on_cpu_and_always_restores() -> None:
    import keras

    _no_gpu()
    assert policy_name("float32") == "float32"
    assert keras.mixed_precision.global_policy().name == "float32"
    with precision_policy("mixed") as name:
        assert name == "mixed_bfloat16" == keras.mixed_precision.global_policy().name
    assert keras.mixed_precision.global_policy().name == "float32"
    with pytest.raises(RuntimeError), precision_policy("mixed"):
        raise RuntimeError("boom")
    assert keras.mixed_precision.global_policy().name == "float32"


def test_mixed_features_are_float32_close_but_not_identical() -> None:
    from featurize.backbones import build_base, feature_model, get_backbone
    from featurize.pipeline import make_forward

    _no_gpu()
    bb = get_backbone("mobilenetv2")
    pre = bb.preprocess_fn()
    strategy = make_strategy("one")

    def build() -> Any:
        return feature_model(build_base(bb, "none", (64, 64), seed=0), [], "avg")

    full = build_feature_model(build, strategy, "float32")
    mixed = build_feature_model(build, strategy, "mixed")
    mixed.set_weights(full.get_weights())
    images = np.random.default_rng(2).integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
    a = distributed_forward(full, pre, 4, strategy)(images)
    # With the default strategy the distributed path is make_forward, bit for bit (full and short batches).
    np.testing.assert_array_equal(a, make_forward(full, pre, 4)(images))
    np.testing.assert_array_equal(a[:3], distributed_forward(full, pre, 4, strategy)(images[:3]))
    b = distributed_forward(mixed, pre, 4, strategy)(images)
    assert b.dtype == np.float32 and b.shape == a.shape == (4, 1280)
    rel = float(np.linalg.norm(a - b) / np.linalg.norm(a))
    assert 0 < rel < 5e-2
