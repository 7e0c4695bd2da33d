"""Side-by-side cost of the fine-tuning recipe's training steps (not a test; asserts nothing).

One process, alternating rounds, the same random batch: a step of the head warm-up (base frozen), of the fine stage
(top ``--unfreeze`` layers), of a fully unfrozen base, and a plain forward pass (what featurize pays per batch), at
the backbone's native size with the recipe's augmentation and loss. Prints median seconds per step and the ratios.

    KERAS_HOME=../shared/keras_home python -m benchmarks.finetune_step --steps 8 --rounds 2
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbone", default="mobilenetv2")
    ap.add_argument("--weights", default="imagenet")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--unfreeze", type=int, default=30)
    args = ap.parse_args()

    from classify.cnn.keras_objects import BalancedAccuracy, keras, tf
    from classify.cnn.models import build_finetune, set_stage
    from classify.cnn.train import stage_optimizer
    from featurize.backbones import get_backbone

    bb = get_backbone(args.backbone)
    rng = np.random.default_rng(0)
    X = tf.constant(rng.integers(0, 255, (args.batch, args.size, args.size, 3)).astype("float32"))
    Y = tf.one_hot(rng.integers(0, 4, args.batch), 4)
    modes = {"head (base frozen)": args.unfreeze, f"fine (top {args.unfreeze})": args.unfreeze, "fine (all layers)": 10**6}
    models = {}
    for name, unfreeze in modes.items():
        model, base = build_finetune(bb, args.weights, (args.size, args.size), 4, seed=0)
        trainable = set_stage(base, "head" if name.startswith("head") else "fine", unfreeze)
        model.compile(optimizer=stage_optimizer(1e-3, 1e-4 if trainable else 0.0, slow=base.trainable_variables if trainable else [],
                                                steps=1000),
                      loss=keras.losses.CategoricalCrossentropy(label_smoothing=0.1), metrics=[BalancedAccuracy(4)])
        model.train_on_batch(X, Y)  # build and trace
        models[name] = model
    forward = models["head (base frozen)"]
    times: dict[str, list[float]] = {k: [] for k in [*modes, "forward only (featurize)"]}
    forward.predict_on_batch(X)
    for _ in range(args.rounds):
        for name, model in models.items():
            for _ in range(args.steps):
                t = time.perf_counter()
                model.train_on_batch(X, Y)
                times[name].append(time.perf_counter() - t)
        for _ in range(args.steps):
            t = time.perf_counter()
            forward.predict_on_batch(X)
            times["forward only (featurize)"].append(time.perf_counter() - t)
    ref = statistics.median(times["head (base frozen)"])
    print(f"{args.backbone} {args.weights} {args.size}x{args.size}, batch {args.batch}, {args.rounds} rounds x {args.steps} steps")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:<28} {med:7.3f} s/step  {med / ref:5.2f}x head step")


if __name__ == "__main__":
    main()
